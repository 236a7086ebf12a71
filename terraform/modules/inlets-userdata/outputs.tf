output "user_data" {
  description = "The #cloud-config user-data, byte for byte what inletsctl renders for the same inputs."
  value       = local.user_data
  sensitive   = true

  # The token and the key are checked here, where Terraform marks them sensitive: a variable's validation block
  # sees the caller's value unmarked (Terraform 1.11), and its error printed a token or key given with file().
  precondition {
    # the server reads it from a token file, one per line, where a line starting with # is a comment and a
    # token over 4096 characters is refused (runtime/core/auth.py): either stopped the server at boot
    condition     = can(regex("^[!-\"$-~][!-~]{15,}$", local.token)) && try(length(local.token) <= 4096, false)
    error_message = "The token must be 16 to 4096 printable ASCII characters without spaces or line breaks, not starting with # (which the server's token file reads as a comment), such as the 64 letters and digits inlets-secrets makes."
  }
  precondition {
    # one whole unencrypted key, as the server loads it at boot: it cannot type an encrypted key's pass phrase
    # (an ENCRYPTED block, or a legacy Proc-Type header, whose text is not base64)
    condition = try(length(regexall("-----BEGIN [A-Z ]*PRIVATE KEY-----", var.server_key)) == 1 && length([
      for block in regexall("-----BEGIN (?:RSA |EC |DSA )?PRIVATE KEY-----([^-]*)-----END (?:RSA |EC |DSA )?PRIVATE KEY-----", var.server_key) : block
      if can(regex("^M[A-P][A-Za-z0-9+/]{2,}={0,2}$", replace(block[0], "/\\s+/", ""))) && length(replace(block[0], "/\\s+/", "")) % 4 == 0
    ]) == 1, false)
    error_message = "The server_key must be one whole unencrypted PEM private key (-----BEGIN PRIVATE KEY----- base64 -----END PRIVATE KEY-----): decrypt it with openssl pkey -in KEY -out server.key and give that file, e.g. file(\"server.key\")."
  }
  precondition {
    condition     = var.mode == "tcp" || var.ports == null
    error_message = "The ports are for mode tcp; give domains for mode http."
  }
  precondition {
    condition     = var.mode == "http" || length(var.domains) == 0
    error_message = "The domains are for mode http; give ports for mode tcp."
  }
  precondition {
    condition     = var.mode == "http" || var.http_port == null
    error_message = "The http_port is for mode http; give ports for mode tcp."
  }
  precondition {
    condition     = !contains(local.ports, var.control_port) && (var.mode == "tcp" || local.http_port != var.control_port)
    error_message = "A data port equals the control port (${var.control_port}); choose other ports."
  }
  precondition {
    condition     = var.ttl == null || var.created_at != null
    error_message = "A ttl needs created_at, the UTC time it counts from (the exit-server modules pin the creation time)."
  }
  precondition {
    condition     = local.ttl_in_range
    error_message = "The ttl must be 1s to 365d, as inletsctl's --ttl; leave it null for an exit server that stays until destroyed."
  }
  precondition {
    condition     = (var.wheel_filename == null) == (var.wheel_xz_base64 == null) && (var.wheel_filename == null) == (var.wheel_sha256 == null)
    error_message = "Give wheel_filename, wheel_xz_base64 and wheel_sha256 together (or none)."
  }
  precondition {
    condition     = var.letsencrypt != true || var.mode == "http"
    error_message = "Let's Encrypt (letsencrypt = true) is for mode http."
  }
  precondition {
    condition     = !local.letsencrypt || length(local.domains) > 0
    error_message = "Let's Encrypt needs domains: certificates are issued for names, not the catch-all (or set letsencrypt = false)."
  }
  precondition {
    condition     = !local.letsencrypt || local.http_port == 80
    error_message = "Let's Encrypt validates on port 80, not http_port ${local.http_port}: set http_port = 80 or letsencrypt = false."
  }
  precondition {
    condition     = !local.letsencrypt || var.control_port != 443
    error_message = "The control_port 443 is where Let's Encrypt's HTTPS listens: choose another control_port (default 8123), or letsencrypt = false."
  }
  precondition {
    condition     = !local.letsencrypt || local.le_domains_ok
    error_message = "Let's Encrypt needs every domain to be a DNS name with a dot and a top-level label that is not all digits (no IP addresses, no single labels), such as example.com."
  }
  precondition {
    condition     = local.letsencrypt || !local.le_issuer_used
    error_message = "letsencrypt_email, letsencrypt_issuer and letsencrypt_ca need Let's Encrypt: mode http with domains on http_port 80 (or letsencrypt = true)."
  }
  precondition {
    condition     = var.letsencrypt_ca == null || !contains(["prod", "staging"], var.letsencrypt_issuer)
    error_message = "The letsencrypt_ca is for a private CA's letsencrypt_issuer URL; ${var.letsencrypt_issuer} is verified with the system's CAs: drop letsencrypt_ca."
  }
  precondition {
    condition     = local.pem_whole.letsencrypt_ca
    error_message = "A certificate in letsencrypt_ca is cut short or is not one (its base64 holds fewer or more bytes than its DER says): give the CA's whole PEM file, e.g. file(\"root_ca.crt\")."
  }
  precondition {
    condition     = local.pem_whole.server_cert
    error_message = "A certificate in server_cert is cut short or is not one (its base64 holds fewer or more bytes than its DER says), so the server would not start: give the whole PEM file, e.g. file(\"server.crt\")."
  }
  precondition {
    condition     = local.user_data_bytes <= var.limit
    error_message = "The rendered user-data is ${local.user_data_bytes} bytes, over the provider's limit of ${var.limit}${local.use_wheel && local.wheel_delivery == "embed" ? ": set wheel_delivery = \"push\"" : ""}."
  }
}

output "wheel" {
  description = "The server wheel the VM installs (null with package): file name, SHA-256, xz+base64 bytes, and how it gets there (embed or push)."
  value = local.use_wheel ? {
    filename  = local.wheel_filename
    sha256    = local.wheel_sha256
    xz_base64 = local.wheel_xz
    delivery  = local.wheel_delivery
  } : null
}

output "vm_key" {
  description = "A digest of the user-data less its creation time (created_at): it changes whenever the user-data changes for another reason, which replaces the VM; the exit-server modules take a new creation time then, so the ttl counts from the new VM."
  value       = local.vm_key
}

output "user_data_bytes" {
  description = "Size of the user-data in bytes."
  value       = local.user_data_bytes
}

output "mode" {
  description = "The tunnel mode."
  value       = var.mode
}

output "ports" {
  description = "TCP mode: the data ports (empty in HTTP mode)."
  value       = local.ports
}

output "domains" {
  description = "HTTP mode: the domains, normalised as inletsctl does (lower case, no trailing dot, no repeats)."
  value       = local.domains
}

output "http_port" {
  description = "HTTP mode: the data-plane port (null in TCP mode)."
  value       = var.mode == "http" ? local.http_port : null
}

output "control_port" {
  description = "The control-plane port."
  value       = var.control_port
}

output "letsencrypt" {
  description = "Whether the server gets Let's Encrypt certificates for its domains and serves HTTPS on 443 (inletsctl's rule when letsencrypt is null)."
  value       = local.letsencrypt
}

output "firewall_ports" {
  description = "Every TCP port a firewall must open, and no other: the control port and the data ports (HTTP mode: the HTTP port, 443 and the control port)."
  value       = local.firewall_ports
}

output "expires_at" {
  description = "When the exit server powers itself off (UTC, RFC 3339), or null."
  value       = local.expires == null ? null : local.expires.iso
}

output "expires_unix" {
  description = "The expiry as Unix time (the value of inletsctl's inlets-expires tag), or null."
  value       = local.expires_unix
}

output "tls_server_name" {
  description = "The name in the server certificate the client verifies (--tls-server-name)."
  value       = local.generated.tls_server_name
}
