output "id" {
  description = "Droplet ID."
  value       = digitalocean_droplet.exit_server.id
}

output "name" {
  description = "Exit server name."
  value       = var.name
}

output "ip" {
  description = "Public IPv4 address."
  value       = digitalocean_droplet.exit_server.ipv4_address
}

output "client_command" {
  description = "The client command, as inletsctl prints it (write the token and CA files first: see the README)."
  value       = module.client.command
}

output "delete_hint" {
  description = "How to delete the exit server."
  value       = "terraform destroy (or: inletsctl delete --provider digitalocean --id ${digitalocean_droplet.exit_server.id}, then drop it from Terraform's state)"
}

output "token" {
  description = "The tunnel's bearer token (terraform output -raw token > inlets-token)."
  value       = module.secrets.token
  sensitive   = true
}

output "ca_cert" {
  description = "The CA certificate the client pins (terraform output -raw ca_cert > inlets-ca.crt)."
  value       = module.secrets.ca_cert
}

output "expires_at" {
  description = "When the droplet powers itself off (UTC), or null."
  value       = module.userdata.expires_at
}

output "open_ports" {
  description = "The TCP ports the tunnel listens on (no DigitalOcean firewall is made, as with inletsctl)."
  value       = module.userdata.firewall_ports
}

output "letsencrypt" {
  description = "Whether the server gets Let's Encrypt certificates for its domains and serves HTTPS on 443 (inletsctl's rule when letsencrypt is null)."
  value       = module.userdata.letsencrypt
}
