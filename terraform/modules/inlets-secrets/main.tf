# The secrets inletsctl generates for each exit server (provisioner/material.py), made
# with the random and tls providers when not given: a 64-character token of letters and
# digits, a per-server CA, and a server certificate naming "inlets-exit-server" (the
# client passes that name as --tls-server-name and pins this CA; the IP is unknown
# when the user-data is rendered). Unlike inletsctl, which throws the CA key away after
# signing, Terraform keeps it in its state: protect the state (or pass your own material).
# As inletsctl's, the server certificate lasts as long as the CA (ten years): the public
# web's 825-day cap does not apply to a private CA only our client pins, and under it the
# server stopped accepting clients after 825 days (runtime/core/certs.py).

terraform {
  required_version = ">= 1.6"
  required_providers {
    random = {
      source  = "hashicorp/random"
      version = ">= 3.5"
    }
    tls = {
      source  = "hashicorp/tls"
      version = ">= 4.0"
    }
  }
}

variable "name" {
  description = "Exit server name (in the CA's common name)."
  type        = string
}

variable "token" {
  description = "Use this token instead of generating one."
  type        = string
  default     = null
  sensitive   = true
}

variable "ca_cert" {
  description = "Use this CA certificate (PEM) with server_cert and server_key instead of generating all three."
  type        = string
  default     = null
}

variable "server_cert" {
  description = "Server certificate (PEM) naming inlets-exit-server, signed by ca_cert."
  type        = string
  default     = null
}

variable "server_key" {
  description = "Private key (PEM) of server_cert."
  type        = string
  default     = null
  sensitive   = true
}

locals {
  tls_server_name = jsondecode(file("${path.module}/../inlets-userdata/templates/generated.json")).tls_server_name
  generate_token  = var.token == null
  generate_tls    = var.ca_cert == null
}

resource "random_password" "token" {
  count   = local.generate_token ? 1 : 0
  length  = 64
  special = false # letters and digits, as inletsctl's token
}

resource "tls_private_key" "ca" {
  count       = local.generate_tls ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "ca" {
  count                 = local.generate_tls ? 1 : 0
  private_key_pem       = tls_private_key.ca[0].private_key_pem
  is_ca_certificate     = true
  set_subject_key_id    = true
  validity_period_hours = 3650 * 24
  allowed_uses          = ["cert_signing", "crl_signing", "digital_signature"]
  subject {
    common_name = "inlets exit server CA (${var.name})"
  }
}

resource "tls_private_key" "server" {
  count       = local.generate_tls ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "server" {
  count           = local.generate_tls ? 1 : 0
  private_key_pem = tls_private_key.server[0].private_key_pem
  dns_names       = [local.tls_server_name]
  subject {
    common_name = local.tls_server_name
  }
}

resource "tls_locally_signed_cert" "server" {
  count                 = local.generate_tls ? 1 : 0
  cert_request_pem      = tls_cert_request.server[0].cert_request_pem
  ca_private_key_pem    = tls_private_key.ca[0].private_key_pem
  ca_cert_pem           = tls_self_signed_cert.ca[0].cert_pem
  validity_period_hours = 3650 * 24 # as long as the CA above
  allowed_uses          = ["digital_signature", "server_auth"]
}

output "token" {
  description = "The bearer token."
  value       = local.generate_token ? random_password.token[0].result : var.token
  sensitive   = true
}

output "ca_cert" {
  description = "The CA certificate the client pins (--tls-ca)."
  value       = local.generate_tls ? tls_self_signed_cert.ca[0].cert_pem : var.ca_cert

  precondition {
    condition     = local.generate_tls ? var.server_cert == null && var.server_key == null : var.server_cert != null && var.server_key != null
    error_message = "Give ca_cert, server_cert and server_key together, or none of them (then they are generated)."
  }
}

output "server_cert" {
  description = "The server certificate (names inlets-exit-server)."
  value       = local.generate_tls ? tls_locally_signed_cert.server[0].cert_pem : var.server_cert
}

output "server_key" {
  description = "The server's private key (PKCS#8 PEM, as inletsctl writes it)."
  value       = local.generate_tls ? tls_private_key.server[0].private_key_pem_pkcs8 : var.server_key
  sensitive   = true
}

output "tls_server_name" {
  description = "The name the client verifies (--tls-server-name)."
  value       = local.tls_server_name
}
