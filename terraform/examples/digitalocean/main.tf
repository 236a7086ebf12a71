# A TCP exit server on DigitalOcean forwarding ports 80 and 443 to this machine.
#   export DIGITALOCEAN_TOKEN=...    (the provider reads it)
#   terraform init && terraform apply
# then follow the printed next_steps.

terraform {
  required_version = ">= 1.6"
  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = ">= 2.30"
    }
  }
}

provider "digitalocean" {}

module "exit_server" {
  source = "../../modules/digitalocean-exit-server"
  name   = "tf-exit-1"
  region = "lon1"
  mode   = "tcp"
  ports  = [80, 443]
  ttl    = "8h" # powers itself off after 8 hours; remove for a permanent server
}

output "ip" {
  value = module.exit_server.ip
}

output "token" {
  value     = module.exit_server.token
  sensitive = true
}

output "ca_cert" {
  value = module.exit_server.ca_cert
}

output "client_command" {
  value = module.exit_server.client_command
}

output "next_steps" {
  value = <<-EOT
    (umask 077; terraform output -raw token > inlets-token)
    terraform output -raw ca_cert > inlets-ca.crt
    ${module.exit_server.client_command}
    Delete: ${module.exit_server.delete_hint}
  EOT
}
