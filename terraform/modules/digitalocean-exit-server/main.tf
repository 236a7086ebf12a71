# A DigitalOcean droplet running an inlets exit server, made the way inletsctl makes one
# (provisioner/providers/digitalocean.py): the same user-data, size, image and tags, so
# `inletsctl list --provider digitalocean` lists it and `inletsctl delete` can delete it.
# Like inletsctl, no DigitalOcean firewall is made: the droplet accepts every port, and
# only the tunnel listens on the control and data ports.

terraform {
  required_version = ">= 1.6"
  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = ">= 2.30"
    }
  }
}

module "secrets" {
  source      = "../inlets-secrets"
  name        = var.name
  token       = var.token
  ca_cert     = var.ca_cert
  server_cert = var.server_cert
  server_key  = var.server_key
}

# The creation time, pinned in state so the expiry (and so the user-data) stays the same
# on every later plan.
resource "terraform_data" "created_at" {
  input = plantimestamp()
  lifecycle {
    ignore_changes = [input]
  }
}

module "userdata" {
  source          = "../inlets-userdata"
  name            = var.name
  mode            = var.mode
  ports           = var.ports
  domains         = var.domains
  http_port       = var.http_port
  control_port    = var.control_port
  token           = module.secrets.token
  server_cert     = module.secrets.server_cert
  server_key      = module.secrets.server_key
  package         = var.package
  wheel_filename  = var.wheel_filename
  wheel_xz_base64 = var.wheel_xz_base64
  wheel_sha256    = var.wheel_sha256
  ttl             = var.ttl
  created_at      = var.ttl == null ? null : terraform_data.created_at.output
  limit           = 64 * 1024
}

resource "digitalocean_droplet" "exit_server" {
  name      = var.name
  region    = var.region
  size      = var.size
  image     = var.image
  ssh_keys  = var.ssh_keys
  user_data = module.userdata.user_data
  # inletsctl's tags: "inlets" finds it, the mode and expiry are read back by list
  tags = distinct(concat(
    ["inlets", "inlets-mode:${var.mode}"],
    module.userdata.expires_unix == null ? [] : ["inlets-expires:${module.userdata.expires_unix}"],
    var.tags,
  ))
}

module "client" {
  source       = "../inlets-client-command"
  host         = digitalocean_droplet.exit_server.ipv4_address
  mode         = var.mode
  ports        = module.userdata.ports
  domains      = module.userdata.domains
  control_port = var.control_port
  upstream     = var.upstream
  token_file   = var.client_token_file
  ca_file      = var.client_ca_file
}
