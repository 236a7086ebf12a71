# The client command inletsctl prints (provisioner/render.py client_command()), from a
# template generated out of templates/client-command.j2 by scripts/gen_terraform_template.py.

locals {
  generated = jsondecode(file("${path.module}/templates/generated.json"))
  upstream  = coalesce(var.upstream, var.mode == "tcp" ? "127.0.0.1" : "http://127.0.0.1:8080")
  domains   = distinct([for d in var.domains : trimsuffix(lower(trimspace(d)), ".")])
  upstreams = var.mode == "tcp" || length(local.domains) == 0 ? [local.upstream] : [for d in local.domains : "${d}=${local.upstream}"]
  url       = "wss://${length(regexall(":", var.host)) > 0 ? "[${var.host}]" : var.host}:${format("%d", var.control_port)}"

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
    condition     = var.mode == "http" || can(regex("^[A-Za-z0-9.:\\[\\]-]+$", local.upstream))
    error_message = "For mode tcp the upstream is a host name or IP."
  }
  precondition {
    condition     = var.mode == "tcp" || can(regex("^https?://[^\\s/]+(/\\S*)?$", local.upstream))
    error_message = "For mode http the upstream is a URL such as http://127.0.0.1:8080."
  }
}

output "url" {
  description = "The control-plane URL."
  value       = local.url
}
