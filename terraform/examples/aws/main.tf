# An HTTP exit server on EC2 for example.com, proxied to http://127.0.0.1:8080 here. As with
# inletsctl, a domain on port 80 turns on Let's Encrypt: HTTPS on 443 once example.com's DNS points
# at the server (letsencrypt = false for plain HTTP; letsencrypt_email for expiry notices).
#   export AWS_REGION=eu-west-1 (and credentials the usual AWS way)
#   terraform init && terraform apply
# then follow the printed next_steps.

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {}

module "exit_server" {
  source  = "../../modules/aws-exit-server"
  name    = "tf-exit-1"
  mode    = "http"
  domains = ["example.com"]
  ttl     = "8h" # powers off and terminates after 8 hours; remove for a permanent server
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
    Point example.com's DNS at ${module.exit_server.ip}${module.exit_server.letsencrypt ? ", then open https://example.com" : ""}. Delete: ${module.exit_server.delete_hint}
  EOT
}
