# The client command inletsctl prints (provisioner/render.py client_command()), from a
# template generated out of templates/client-command.j2 by scripts/gen_terraform_template.py.

locals {
  generated = jsondecode(file("${path.module}/templates/generated.json"))
  upstream  = var.upstream != null ? var.upstream : var.mode == "tcp" ? "127.0.0.1" : "http://127.0.0.1:8080" # "" is refused, not the default
  domains   = distinct([for d in var.domains : trimsuffix(lower(trimspace(d)), ".")])
  upstreams = var.mode == "tcp" || length(local.domains) == 0 ? [local.upstream] : [for d in local.domains : "${d}=${local.upstream}"]
  url       = "wss://${length(regexall(":", var.host)) > 0 ? "[${var.host}]" : var.host}:${format("%d", var.control_port)}"
  # An upstream's host, for the preconditions, by the client's rule (runtime/core/hosts.py check_host): an IP
  # address (as Python's ipaddress: no leading zeros, which cidrhost takes: 127.000.0.1 made a command the client
  # refused), else dotted numbers are refused and a name has labels of 1-63 letters, digits, _ and inner hyphens,
  # 253 characters in all.
  label     = "[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
  url_parts = try(regex("^(?i:https?)://(?:\\[([^]]*)\\]|([^][:/?#@]*))(?::([0-9]{1,5}))?/?$", local.upstream), [null, null, null]) # [IPv6], host, port
  bracketed = startswith(local.upstream, "[") && endswith(local.upstream, "]")
  host = (var.mode == "tcp" ? (local.bracketed ? substr(local.upstream, 1, length(local.upstream) - 2) : local.upstream)
  : try(coalesce(local.url_parts[0], local.url_parts[1]), ""))
  host_ok = length(local.host) > 0 && (strcontains(local.host, ":") ? can(cidrhost("${local.host}/128", 0)) : (
    can(regex("^[0-9]+(?:\\.[0-9]+)*\\.?$", local.host)) ? can(regex("^(?:0|[1-9][0-9]*)(?:\\.(?:0|[1-9][0-9]*)){3}$", local.host)) && can(cidrhost("${local.host}/32", 0)) :
    can(regex("^(?:${local.label}\\.)*${local.label}\\.?$", local.host)) && length(trimsuffix(local.host, ".")) <= 253
  ))

  rendered = templatefile("${path.module}/templates/client-command.tftpl", {
    inlets      = var.inlets
    mode        = var.mode
    urls        = [local.url]
    token_file  = var.token_file
    ca_file     = var.ca_file
    server_name = local.generated.tls_server_name
    upstreams   = local.upstreams
    ports       = var.mode == "tcp" ? join(",", [for p in var.ports : format("%d", p)]) : ""
  })
  # Python's str.strip(), as inletsctl applies to the rendered command
  py_space = "[\\t\\n\\x{0b}\\x{0c}\\r\\x{1c}-\\x{1f} \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}]"
  command  = replace(local.rendered, "/^${local.py_space}+|${local.py_space}+$/", "")
}

output "command" {
  description = "The exact, copy-pasteable client command, as inletsctl prints it."
  value       = local.command

  precondition {
    condition     = var.mode == "http" || length(var.ports) > 0
    error_message = "For mode tcp give the data ports (ports): the client needs --ports."
  }
  precondition {
    condition     = var.mode == "http" || !contains(var.ports, var.control_port)
    error_message = "A data port equals the control port (${var.control_port}); choose other ports."
  }
  # The client's own rules for --upstream, in their structure (inletsctl runs the client's parser itself):
  # tcp, a host alone (the ports come from --ports); http, scheme://host[:port] with no path, query or user.
  precondition {
    condition     = var.mode == "http" || local.host_ok
    error_message = "For mode tcp the upstream is an IP address or a host name such as backend.internal, without a port (the ports come from ports)."
  }
  precondition {
    condition = var.mode == "tcp" || (
      local.host_ok && (local.url_parts[0] != null) == strcontains(local.host, ":")
      && (local.url_parts[2] == null || try(tonumber(local.url_parts[2]) >= 1 && tonumber(local.url_parts[2]) <= 65535, false))
    )
    error_message = "For mode http the upstream is a URL such as http://127.0.0.1:8080 (an IP address or a host name; an IPv6 address in brackets): no path, query or user name, a port 1-65535."
  }
}

output "url" {
  description = "The control-plane URL."
  value       = local.url
}
