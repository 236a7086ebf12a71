variable "name" {
  description = "Exit server name: 1-63 lower-case letters, digits and inner hyphens (the instance's Name and inlets-name tags, as inletsctl)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", var.name))
    error_message = "The name must be 1-63 lower-case letters, digits and inner hyphens, as inletsctl's names, such as my-exit-1."
  }
}

variable "mode" {
  description = "Tunnel mode: tcp or http."
  type        = string
  default     = "tcp"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
}

variable "ports" {
  description = "TCP mode: data ports (null: 80 and 443)."
  type        = list(number)
  default     = null
}

variable "domains" {
  description = "HTTP mode: domains the client serves (none: catch-all)."
  type        = list(string)
  default     = []
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
}

variable "http_port" {
  description = "HTTP mode: the data-plane port (null: 80; refused in mode tcp, as inletsctl's --http-port)."
  type        = number
  default     = null
}

variable "control_port" {
  description = "The control-plane port."
  type        = number
  default     = 8123
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
}

variable "letsencrypt" {
  description = "HTTP mode: HTTPS on 443 with Let's Encrypt certificates for each domain (port 80 answers the HTTP-01 challenges, then redirects), as inletsctl's --letsencrypt/--no-letsencrypt. Null: as inletsctl on a cloud provider, on in mode http with domains on http_port 80. Point the domains' DNS at the server's IP; using it accepts the CA's terms."
  type        = bool
  default     = null
}

variable "letsencrypt_email" {
  description = "Contact address for the Let's Encrypt account (expiry notices); null: none."
  type        = string
  default     = null
}

variable "letsencrypt_issuer" {
  description = "prod, staging (for trials: no rate limits, untrusted certificates) or an https:// ACME directory URL."
  type        = string
  default     = "prod"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
}

variable "letsencrypt_ca" {
  description = "PEM certificates the server verifies a private letsencrypt_issuer URL's HTTPS with (e.g. step-ca's root: file(\"root_ca.crt\")), as inletsctl's --letsencrypt-ca; null: the system's CAs."
  type        = string
  default     = null
}

variable "upstream" {
  description = "What the printed client forwards to: a host (tcp) or URL (http); null: 127.0.0.1 / http://127.0.0.1:8080."
  type        = string
  default     = null
}

variable "ttl" {
  description = "Lifetime in inletsctl's --ttl syntax (30m, 2h, 1d12h): the instance powers itself off then (and, shut down from inside, is terminated) and carries the inlets-expires tag. Null: no expiry."
  type        = string
  default     = null
}

variable "package" {
  description = "A pip requirement the VM installs instead of the server wheel of this checkout (null: the wheel, as inletsctl)."
  type        = string
  default     = null
}

variable "wheel_filename" {
  description = "Another server wheel (see terraform/tools/wheel_xz_base64.py, which prints the three wheel_ inputs)."
  type        = string
  default     = null
}

variable "wheel_xz_base64" {
  description = "That wheel, xz-compressed and base64-encoded."
  type        = string
  default     = null
}

variable "wheel_sha256" {
  description = "That wheel's SHA-256 (hex)."
  type        = string
  default     = null
}

variable "token" {
  description = "Bearer token (null: generated, 64 letters and digits)."
  type        = string
  default     = null
  sensitive   = true
}

variable "ca_cert" {
  description = "CA certificate PEM (null: a per-server CA is generated, with server_cert and server_key)."
  type        = string
  default     = null
}

variable "server_cert" {
  description = "Server certificate PEM naming inlets-exit-server, signed by ca_cert."
  type        = string
  default     = null
}

variable "server_key" {
  description = "Private key PEM of server_cert."
  type        = string
  default     = null
  sensitive   = true
}

variable "client_token_file" {
  description = "Path of the token file in the printed client command."
  type        = string
  default     = "inlets-token"
  validation {
    condition     = var.client_token_file != ""
    error_message = "The client_token_file is empty: give the path of the token file the printed client command reads, such as inlets-token."
  }
}

variable "client_ca_file" {
  description = "Path of the CA file in the printed client command."
  type        = string
  default     = "inlets-ca.crt"
  validation {
    condition     = var.client_ca_file != ""
    error_message = "The client_ca_file is empty: give the path of the CA certificate the printed client command reads, such as inlets-ca.crt."
  }
}


variable "instance_type" {
  description = "EC2 instance type."
  type        = string
  default     = "t3.micro"
}

variable "ami" {
  description = "AMI ID (null: the newest Canonical Ubuntu 24.04 LTS image in the region, as inletsctl)."
  type        = string
  default     = null
}

variable "subnet_id" {
  description = "Subnet to launch in (null: the default VPC's default subnet)."
  type        = string
  default     = null
}

variable "vpc_id" {
  description = "VPC of the security group (null: the default VPC). Must match subnet_id."
  type        = string
  default     = null
}

variable "key_name" {
  description = "EC2 key pair name for SSH (optional; the tunnel needs none). Port 22 is the VM's sshd, never a tunnel port, so the security group does not open it: add a rule to output security_group_id for SSH."
  type        = string
  default     = null
}

variable "allowed_cidrs_ipv4" {
  description = "IPv4 networks allowed to reach the control and data ports, each once, in CIDR form (0.0.0.0/0, 203.0.113.0/24, 198.51.100.7/32)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false
  validation {
    condition     = alltrue([for c in var.allowed_cidrs_ipv4 : can(cidrnetmask(c)) && try("${cidrhost(c, 0)}/${split("/", c)[1]}" == c, false)])
    error_message = "Each allowed_cidrs_ipv4 entry must be an IPv4 network in CIDR form, written from its first address, such as 0.0.0.0/0 or 203.0.113.0/24 (one address: 203.0.113.7/32); IPv6 networks go in allowed_cidrs_ipv6."
  }
  validation {
    condition     = length(distinct(var.allowed_cidrs_ipv4)) == length(var.allowed_cidrs_ipv4)
    error_message = "The allowed_cidrs_ipv4 list a network more than once: give each network once."
  }
}

variable "allowed_cidrs_ipv6" {
  description = "IPv6 networks allowed, each once, in CIDR form (default VPCs have no IPv6, as inletsctl assumes)."
  type        = list(string)
  default     = []
  nullable    = false
  validation {
    condition     = alltrue([for c in var.allowed_cidrs_ipv6 : try(strcontains(c, ":") && cidrhost(c, 0) == cidrhost("${split("/", c)[0]}/128", 0), false)])
    error_message = "Each allowed_cidrs_ipv6 entry must be an IPv6 network in CIDR form, written from its first address, such as ::/0 or 2001:db8::/32 (one address: 2001:db8::7/128); IPv4 networks go in allowed_cidrs_ipv4."
  }
  validation {
    condition     = length(distinct(var.allowed_cidrs_ipv6)) == length(var.allowed_cidrs_ipv6)
    error_message = "The allowed_cidrs_ipv6 list a network more than once: give each network once."
  }
}

variable "tags" {
  description = "Extra tags on the instance and security group (the inlets tags are always set; inlets-expires, the expiry, comes from ttl alone)."
  type        = map(string)
  default     = {}
  validation {
    # inletsctl sets it from --ttl alone, and list and --prune read it as the expiry: with ttl null, yours was kept
    condition     = var.tags == null ? true : !contains(keys(var.tags), "inlets-expires")
    error_message = "The tags must not set inlets-expires, the expiry inletsctl list shows and inletsctl list --prune deletes the server at: give a ttl instead, which sets it."
  }
}

variable "deliver_wheel" {
  description = "Send the server wheel from here when the instance is up (false: send it yourself with terraform/tools/push_wheel.py, e.g. from a host that can reach the instance)."
  type        = bool
  default     = true
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
}

variable "python" {
  description = "The Python 3 that runs terraform/tools/push_wheel.py here (the standard library is enough): one program, its name on PATH or its path (spaces are fine), without options; set Python's options in the environment Terraform runs in (e.g. PYTHONUTF8=1 for -X utf8)."
  type        = string
  default     = "python3"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    # local-exec runs it as one word (main.tf quotes it): "python3 -X utf8" would name no program, and apply
    # failed only once the VM was made
    condition     = can(regex("^\\S(?:.*\\S)?$", var.python)) && !can(regex("\\s-", var.python))
    error_message = "The python must be one program, its name on PATH or its path (spaces are fine), without options: set Python's options in the environment you run Terraform in instead (e.g. PYTHONUTF8=1 for -X utf8)."
  }
}

variable "push_timeout" {
  description = "Seconds to wait for the instance to take the server wheel."
  type        = number
  default     = 900
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    # push_wheel.py gave up at once on 0 or less: apply made the instance, then failed, the wheel not sent
    condition     = var.push_timeout > 0
    error_message = "The push_timeout must be a positive number of seconds, such as 900: how long apply waits for the instance to take the server wheel."
  }
}
