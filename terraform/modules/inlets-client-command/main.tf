# The client command inletsctl prints (provisioner/render.py client_command()), from a
# template generated out of templates/client-command.j2 by scripts/gen_terraform_template.py.

locals {
  generated = jsondecode(file("${path.module}/templates/generated.json"))
  upstream  = coalesce(var.upstream, var.mode == "tcp" ? "127.0.0.1" : "http://127.0.0.1:8080")
  domains   = distinct([for d in var.domains : trimsuffix(lower(trimspace(d)), ".")])
  upstreams = var.mode == "tcp" || length(local.domains) == 0 ? [local.upstream] : [for d in local.domains : "${d}=${local.upstream}"]
  url       = "wss://${length(regexall(":", var.host)) > 0 ? "[${var.host}]" : var.host}:${format("%d", var.control_port)}"
  # An upstream's host, for the preconditions: a DNS name (no empty label; IPv4 is one too) or an IPv6 address.
  name = "([A-Za-z0-9_-]+\\.)*[A-Za-z0-9_-]+\\.?"
  ipv6 = "[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*"

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
    condition     = var.mode == "http" || can(regex("^(${local.name}|${local.ipv6}|\\[${local.ipv6}\\])$", local.upstream))
    error_message = "For mode tcp the upstream is a host name or IP, without a port (the ports come from ports)."
  }
  precondition {
    condition = var.mode == "tcp" || (
      can(regex("^https?://(${local.name}|\\[${local.ipv6}\\])(:[0-9]{1,5})?/?$", local.upstream))
      && alltrue([for port in regexall(":([0-9]{1,5})/?$", local.upstream) : tonumber(port[0]) >= 1 && tonumber(port[0]) <= 65535])
    )
    error_message = "For mode http the upstream is a URL such as http://127.0.0.1:8080: no path, query or user name, a port 1-65535."
  }
}

output "url" {
  description = "The control-plane URL."
  value       = local.url
}
