output "id" {
  description = "EC2 instance ID."
  value       = aws_instance.exit_server.id
}

output "name" {
  description = "Exit server name."
  value       = var.name
}

output "ip" {
  description = "Public IPv4 address."
  value       = aws_instance.exit_server.public_ip
}

output "security_group_id" {
  description = "The security group made for this exit server."
  value       = aws_security_group.exit_server.id
}

output "client_command" {
  description = "The client command, as inletsctl prints it (write the token and CA files first: see the README)."
  value       = module.client.command
}

output "delete_hint" {
  description = "How to delete the exit server."
  value       = "terraform destroy (deletes the instance and its security group; inletsctl delete --provider ec2 --id ${aws_instance.exit_server.id} would leave Terraform's state behind)"
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
  description = "When the instance powers itself off and terminates (UTC), or null."
  value       = module.userdata.expires_at
}

output "open_ports" {
  description = "The TCP ports the security group opens."
  value       = module.userdata.firewall_ports
}

output "letsencrypt" {
  description = "Whether the server gets Let's Encrypt certificates for its domains and serves HTTPS on 443 (inletsctl's rule when letsencrypt is null)."
  value       = module.userdata.letsencrypt
}
