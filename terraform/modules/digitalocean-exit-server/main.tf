# A DigitalOcean droplet running an inlets exit server, made the way inletsctl makes one
# (provisioner/providers/digitalocean.py): the same user-data, size, image and tags, so
# `inletsctl list --provider digitalocean` lists it and `inletsctl delete` can delete it.
# Like inletsctl, no DigitalOcean firewall is made: the droplet accepts every port, and
# only the tunnel listens on the control and data ports. The server wheel is in the user-data
# where it fits DigitalOcean's 64 KiB with inletsctl's margin, and sent after boot otherwise.

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

# The creation time, pinned in state so the expiry (and so the user-data) stays the same on
# every later plan; taken anew whenever the VM is replaced, so a new VM's expiry counts from its
# own creation, not from the first one's: on every change of the user-data other than its expiry
# (ttl, ports, mode, package, runtime...: module.userdata.vm_key) and of the droplet's region, image and SSH keys,
# which DigitalOcean replaces the VM for. To replace the VM by hand, replace this instead
# (terraform apply -replace=...terraform_data.created_at): the VM follows, its user-data changed.
resource "terraform_data" "created_at" {
  input = plantimestamp()
  triggers_replace = {
    user_data = module.userdata.vm_key
    region    = var.region
    image     = var.image
    ssh_keys  = sort(distinct(var.ssh_keys)) # a set to DigitalOcean: order alone replaces nothing
  }
  lifecycle {
    ignore_changes = [input]
  }
}

module "userdata" {
  source             = "../inlets-userdata"
  name               = var.name
  mode               = var.mode
  ports              = var.ports
  domains            = var.domains
  http_port          = var.http_port
  control_port       = var.control_port
  letsencrypt        = var.letsencrypt
  letsencrypt_email  = var.letsencrypt_email
  letsencrypt_issuer = var.letsencrypt_issuer
  letsencrypt_ca     = var.letsencrypt_ca
  token              = module.secrets.token
  server_cert        = module.secrets.server_cert
  server_key         = module.secrets.server_key
  package            = var.package
  wheel_filename     = var.wheel_filename
  wheel_xz_base64    = var.wheel_xz_base64
  wheel_sha256       = var.wheel_sha256
  wheel_delivery     = var.wheel_delivery
  ttl                = var.ttl
  created_at         = var.ttl == null ? null : terraform_data.created_at.output
  limit              = 64 * 1024
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

# push_wheel.py quoted for local-exec's shell: path.module is relative to the root module, and a folder on the
# way with a space (source = "../inlets tools/terraform/...") split it in two ("can't open file '../inlets'");
# var.python quoted so too: one program, whose path may hold spaces ("Application Support")
locals {
  push_wheel = "'${replace("${path.module}/../../tools/push_wheel.py", "'", "'\\''")}'"
  python     = "'${replace(var.python, "'", "'\\''")}'"
}

# Where the server wheel is not in the user-data (wheel_delivery push, or auto where it does not fit
# with inletsctl's margin: every mode's wheel today, TCP, HTTP and HTTP with Let's Encrypt, once the
# token and certificates are in), the droplet waits for it on the control port and
# this sends it, as inletsctl create does. With an embedded wheel there is nothing to send: the
# command is a no-op then (known only once the token and certificates are, so not a count).
resource "terraform_data" "runtime" {
  count            = var.package == null && var.deliver_wheel && var.wheel_delivery != "embed" ? 1 : 0
  triggers_replace = [digitalocean_droplet.exit_server.id]

  provisioner "local-exec" {
    command = module.userdata.wheel.delivery == "push" ? "${local.python} ${local.push_wheel}" : "exit 0"
    environment = {
      INLETS_HOST            = digitalocean_droplet.exit_server.ipv4_address
      INLETS_PORT            = tostring(var.control_port)
      INLETS_TOKEN           = module.secrets.token
      INLETS_CA_CERT         = module.secrets.ca_cert
      INLETS_WHEEL_XZ_BASE64 = module.userdata.wheel.xz_base64
      INLETS_TIMEOUT         = tostring(var.push_timeout)
    }
  }
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
