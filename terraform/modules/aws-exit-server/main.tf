# An EC2 instance running an inlets exit server, made the way inletsctl's ec2 provider
# makes one: the same user-data, a security group (inlets-NAME) opening exactly the
# control port and the mode's data ports (TCP ports under 1024 included; HTTP mode 80,
# 443 and the control port), and the same tags, so `inletsctl list` / `delete` see it.

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
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
# (ttl, ports, mode, package, runtime...: module.userdata.vm_key) and of the instance's AMI, subnet and key pair,
# which AWS replaces the VM for. To replace the VM by hand, replace this instead
# (terraform apply -replace=...terraform_data.created_at): the VM follows, its user-data changed.
resource "terraform_data" "created_at" {
  input = plantimestamp()
  triggers_replace = {
    user_data = module.userdata.vm_key
    ami       = local.ami
    subnet_id = var.subnet_id
    key_name  = var.key_name
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
  wheel_delivery     = "push" # the wheel does not fit EC2's 16 KiB: terraform_data.runtime sends it
  ttl                = var.ttl
  created_at         = var.ttl == null ? null : terraform_data.created_at.output
  limit              = 16 * 1024 # EC2's user-data limit
}

data "aws_ami" "ubuntu" {
  count       = var.ami == null ? 1 : 0
  most_recent = true
  owners      = ["099720109477"] # Canonical
  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd*/ubuntu-noble-24.04-amd64-server-*"]
  }
  filter {
    name   = "state"
    values = ["available"]
  }
}

locals {
  ami = var.ami != null ? var.ami : data.aws_ami.ubuntu[0].id # a newer Ubuntu image replaces the instance
  # inletsctl's firewall_name(NAME, 255): whole (a name has at most 63 characters), so inletsctl delete finds it
  firewall_name = "inlets-${var.name}"
  # push_wheel.py quoted for local-exec's shell: path.module is relative to the root module, and a folder on
  # the way with a space (source = "../inlets tools/terraform/...") split it in two ("can't open file '../inlets'")
  push_wheel = "'${replace("${path.module}/../../tools/push_wheel.py", "'", "'\\''")}'"
  # var.python quoted so too: one program, whose path may hold spaces ("Application Support")
  python = "'${replace(var.python, "'", "'\\''")}'"
  rules = merge(
    { for pair in setproduct(module.userdata.firewall_ports, var.allowed_cidrs_ipv4) : "${pair[0]}-${pair[1]}" => { port = pair[0], ipv4 = pair[1], ipv6 = null } },
    { for pair in setproduct(module.userdata.firewall_ports, var.allowed_cidrs_ipv6) : "${pair[0]}-${pair[1]}" => { port = pair[0], ipv4 = null, ipv6 = pair[1] } },
  )
  inlets_tags = merge(
    {
      Name          = var.name
      "inlets"      = "true"
      "inlets-name" = var.name
      "inlets-mode" = var.mode
      "inlets-sg"   = aws_security_group.exit_server.id # inletsctl delete removes it too
    },
    module.userdata.expires_unix == null ? {} : { "inlets-expires" = tostring(module.userdata.expires_unix) },
  )
}

resource "aws_security_group" "exit_server" {
  name        = local.firewall_name
  description = "inlets exit server ${var.name} (${var.mode})"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = local.firewall_name, "inlets" = "true", "inlets-name" = var.name })

  lifecycle {
    precondition {
      condition     = length(var.allowed_cidrs_ipv4) + length(var.allowed_cidrs_ipv6) > 0 || !var.deliver_wheel || var.package != null
      error_message = "The allowed_cidrs_ipv4 and allowed_cidrs_ipv6 are both empty: no one could reach the tunnel, and apply would wait push_timeout to send the server wheel. Give your clients' networks (e.g. [\"198.51.100.7/32\"]), or set deliver_wheel = false and add rules to output security_group_id yourself."
    }
  }
}

# Inbound: exactly the control port and the data ports, nothing else (no SSH unless asked).
resource "aws_vpc_security_group_ingress_rule" "tunnel" {
  for_each          = local.rules
  security_group_id = aws_security_group.exit_server.id
  description       = each.value.port == var.control_port ? "inlets control plane" : "inlets data plane"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.ipv4
  cidr_ipv6         = each.value.ipv6
}

# Outbound: the VM installs packages and the runtime at boot.
resource "aws_vpc_security_group_egress_rule" "all_ipv4" {
  security_group_id = aws_security_group.exit_server.id
  description       = "packages and the runtime at boot"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_instance" "exit_server" {
  ami                                  = local.ami
  instance_type                        = var.instance_type
  subnet_id                            = var.subnet_id
  vpc_security_group_ids               = [aws_security_group.exit_server.id]
  associate_public_ip_address          = true
  key_name                             = var.key_name
  user_data                            = module.userdata.user_data
  user_data_replace_on_change          = true
  instance_initiated_shutdown_behavior = var.ttl == null ? "stop" : "terminate" # the expiry timer powers off
  tags                                 = merge(var.tags, local.inlets_tags)

  metadata_options {
    http_tokens = "required"
  }
}

# The server wheel does not fit EC2's 16 KiB of user-data: the instance waits for it on the control
# port (TLS with its own certificate, the token, the digest in the user-data), and this sends it,
# as inletsctl create does; so apply ends with the exit server installed. Needs var.python.
resource "terraform_data" "runtime" {
  count            = var.package == null && var.deliver_wheel ? 1 : 0
  triggers_replace = [aws_instance.exit_server.id]

  provisioner "local-exec" {
    command = "${local.python} ${local.push_wheel}"
    environment = {
      INLETS_HOST            = aws_instance.exit_server.public_ip
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
  host         = aws_instance.exit_server.public_ip
  mode         = var.mode
  ports        = module.userdata.ports
  domains      = module.userdata.domains
  control_port = var.control_port
  upstream     = var.upstream
  token_file   = var.client_token_file
  ca_file      = var.client_ca_file
}
