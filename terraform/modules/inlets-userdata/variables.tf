variable "name" {
  description = "Name of the exit server (appears in the user-data's header comment): no control characters."
  type        = string
  validation {
    # and no U+FFFE or U+FFFF, which YAML may not carry raw (jsonencode writes them so; cloud-init refused the file)
    condition     = can(regex("^[^\\x00-\\x1f\\x7f-\\x9f\\x{2028}\\x{2029}\\x{fffe}\\x{ffff}]+$", var.name))
    error_message = "The name must be one line without control characters, such as the server name inletsctl would use (my-exit-1)."
  }
}

variable "mode" {
  description = "Tunnel mode: tcp (raw TCP ports) or http (Host-routed reverse proxy)."
  type        = string
  default     = "tcp"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    condition     = contains(["tcp", "http"], var.mode)
    error_message = "The mode must be tcp or http."
  }
}

variable "ports" {
  description = "TCP mode: data ports the server opens for the client (ports under 1024 work). Null means 80 and 443, as inletsctl."
  type        = list(number)
  default     = null
  validation {
    condition     = var.ports == null ? true : length(var.ports) > 0 && alltrue([for p in var.ports : try(p == floor(p) && p >= 1 && p <= 65535, false)]) && length(distinct(var.ports)) == length(var.ports)
    error_message = "The ports must be distinct whole numbers from 1 to 65535 (at least one)."
  }
  validation {
    condition     = var.ports == null ? true : !contains(var.ports, 22)
    error_message = "Port 22 is where the VM's SSH server (sshd) listens, so the tunnel cannot listen there: choose other ports (SSH to the VM needs no data port)."
  }
}

variable "domains" {
  description = "HTTP mode: host names the client serves (none: the client is the catch-all)."
  type        = list(string)
  default     = []
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    condition     = alltrue([for d in var.domains : try(can(regex("^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", trimsuffix(lower(trimspace(d)), "."))) && length(trimsuffix(lower(trimspace(d)), ".")) <= 253, false)])
    error_message = "Every domain must be a valid DNS name, such as example.com."
  }
}

variable "http_port" {
  description = "HTTP mode: the data-plane port. Null: 80, as inletsctl's --http-port; refused in mode tcp, as that flag is."
  type        = number
  default     = null
  validation {
    condition     = var.http_port == null ? true : var.http_port == floor(var.http_port) && var.http_port >= 1 && var.http_port <= 65535
    error_message = "The http_port must be a port from 1 to 65535."
  }
  validation {
    condition     = var.http_port != 22
    error_message = "The http_port cannot be 22, where the VM's SSH server (sshd) listens: choose another port, such as 80."
  }
}

variable "control_port" {
  description = "The tunnel's control-plane (websocket) port."
  type        = number
  default     = 8123
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    condition     = var.control_port == floor(var.control_port) && var.control_port >= 1 && var.control_port <= 65535
    error_message = "The control_port must be a port from 1 to 65535."
  }
  validation {
    condition     = var.control_port != 22
    error_message = "The control_port cannot be 22, where the VM's SSH server (sshd) listens: choose another port, such as 8123."
  }
}

variable "token" {
  description = "Bearer token the client authenticates with (one line; inletsctl and the exit-server modules make 64 letters and digits). White space around it, such as the line break ending a token file given with file(), is dropped, as inlets drops it reading a token file."
  type        = string
  sensitive   = true
  nullable    = false # null: "Required variable not set", not a function's error deep in the user-data
  # Checked by a precondition of output user_data, not a validation block: Terraform (1.11) shows the value a
  # failed validation tested, sensitive or not, so a token given with file() was printed in the error.
}

variable "server_cert" {
  description = "PEM certificate of the exit server, naming inlets-exit-server and signed by the CA the client pins (the CA itself stays with the client)."
  type        = string
  validation {
    # the whole of each block, as the server's TLS loader needs it at boot (a header alone or a block cut short
    # passed and stopped the server on the VM)
    condition = try(length(regexall("-----BEGIN (?:X509 )?CERTIFICATE-----", var.server_cert)) > 0 && alltrue([
      for block in regexall("-----BEGIN (?:X509 )?CERTIFICATE-----([^-]*)-----END (?:X509 )?CERTIFICATE-----", var.server_cert) :
      can(regex("^MI[I-L][A-Za-z0-9+/]{5,}={0,2}$", replace(block[0], "/\\s+/", ""))) && length(replace(block[0], "/\\s+/", "")) % 4 == 0
    ]) && length(regexall("-----BEGIN (?:X509 )?CERTIFICATE-----", var.server_cert)) == length(regexall("-----BEGIN (?:X509 )?CERTIFICATE-----[^-]*-----END (?:X509 )?CERTIFICATE-----", var.server_cert)), false)
    error_message = "The server_cert must be the whole PEM certificate (-----BEGIN CERTIFICATE----- base64 -----END CERTIFICATE-----) naming inlets-exit-server: give its file, e.g. file(\"server.crt\")."
  }
}

variable "server_key" {
  description = "PEM private key of server_cert."
  type        = string
  sensitive   = true
  nullable    = false # null: "Required variable not set", not a function's error deep in the user-data
  # Checked by a precondition of output user_data, not a validation block: a failed validation printed the key.
}

variable "package" {
  description = "A pip requirement the VM installs instead of the server wheel (e.g. inlets-py==0.2.0). Null: the server-only wheel of this checkout (runtime/MODE.json), as inletsctl."
  type        = string
  default     = null
  validation {
    condition     = var.package == null ? true : can(regex("^[!-~]([ -~]*[!-~])?$", var.package))
    error_message = "The package must be one pip requirement on one line (printable ASCII)."
  }
}

variable "wheel_delivery" {
  description = "How the VM gets the server wheel: embed (in the user-data), push (the user-data waits on the control port for the wheel, sent by terraform/tools/push_wheel.py, as inletsctl create does where the wheel does not fit, e.g. EC2's 16 KiB), or auto (inletsctl's own choice: embed where the user-data leaves 4 KiB of the limit unused, else push; output wheel.delivery says which, known once the token and certificates are). Default auto: no server wheel embedded fits DigitalOcean's 64 KiB (the default limit), so embed there fails at plan."
  type        = string
  default     = "auto"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    condition     = contains(["embed", "push", "auto"], var.wheel_delivery)
    error_message = "The wheel_delivery must be embed, push or auto."
  }
}

variable "wheel_filename" {
  description = "Another server wheel than this checkout's: its file name (e.g. inlets_py-0.1.0-py3-none-any.whl). Needs wheel_xz_base64 and wheel_sha256; terraform/tools/wheel_xz_base64.py prints all three."
  type        = string
  default     = null
  validation {
    condition     = var.wheel_filename == null ? true : can(regex("^[A-Za-z0-9_.+-]+\\.whl$", var.wheel_filename))
    error_message = "The wheel_filename must be a wheel file name ending in .whl."
  }
}

variable "wheel_xz_base64" {
  description = "That wheel, xz-compressed and base64-encoded, as inletsctl puts it in user-data (line breaks, as base64 wraps its output, are removed)."
  type        = string
  default     = null
  validation {
    condition     = var.wheel_xz_base64 == null ? true : can(regex("^[A-Za-z0-9+/]+={0,2}$", replace(var.wheel_xz_base64, "/\\s+/", "")))
    error_message = "The wheel_xz_base64 must be base64 (letters, digits, + and /, = padding): the wheel_xz_base64 that terraform/tools/wheel_xz_base64.py prints."
  }
}

variable "wheel_sha256" {
  description = "That wheel's SHA-256 (hex): the VM accepts a pushed wheel only with this digest."
  type        = string
  default     = null
  validation {
    condition     = var.wheel_sha256 == null ? true : can(regex("^[0-9a-f]{64}$", var.wheel_sha256))
    error_message = "The wheel_sha256 must be 64 lower-case hex digits."
  }
}

variable "constraints" {
  description = "pip constraints (name==version) for the wheel's dependencies, one per item. Null: those pinned in runtime/MODE.json."
  type        = list(string)
  default     = null
  validation {
    condition     = var.constraints == null ? true : alltrue([for c in var.constraints : can(regex("^[!-~]([ -~]*[!-~])?$", c))])
    error_message = "Each constraint must be one pip constraint on one line of printable ASCII, such as cryptography==42.0.5: give one list item per constraint."
  }
}

variable "ttl" {
  description = "Lifetime after created_at, in inletsctl's --ttl syntax (30m, 2h, 1d12h, 45s): a systemd timer powers the VM off then. Null: no expiry."
  type        = string
  default     = null
  validation {
    condition     = var.ttl == null ? true : can(regex("^(?:(\\d+)d)?(?:(\\d+)h)?(?:(\\d+)m)?(?:(\\d+)s)?$", trimspace(var.ttl))) && trimspace(var.ttl) != ""
    error_message = "The ttl must look like 30m, 2h, 1d12h or 45s."
  }
}

variable "created_at" {
  description = "UTC time (RFC 3339, ending in Z, before the year 9999) the ttl counts from. The exit-server modules pin the creation time; a fixed value keeps the user-data stable across plans."
  type        = string
  default     = null
  validation {
    condition     = var.created_at == null ? true : can(regex("^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(?:\\.\\d+)?Z$", var.created_at)) && can(timeadd(var.created_at, "0s"))
    error_message = "The created_at must be an RFC 3339 UTC time that exists, such as 2030-01-02T03:04:05Z."
  }
  validation {
    # its expiry, up to the ttl's 365 days later, must still have a four-digit year: timeadd() runs on into
    # 10000, which formatdate() then refused in Go's words ("not a valid RFC3339 timestamp")
    condition     = var.created_at == null ? true : try(tonumber(substr(var.created_at, 0, 4)) < 9999, true)
    error_message = "The created_at must be before the year 9999, so that its expiry (up to 365 days later) has a four-digit year: give the time the exit server is created, such as 2030-01-02T03:04:05Z."
  }
}

variable "limit" {
  description = "Size limit of the provider's user-data in bytes (DigitalOcean 65536, EC2 16384)."
  type        = number
  default     = 65536
  nullable    = false
  validation {
    condition     = var.limit == floor(var.limit) && var.limit >= 1
    error_message = "The limit must be a whole number of bytes of at least 1, the provider's user-data limit (DigitalOcean 65536, EC2 16384)."
  }
}

variable "letsencrypt" {
  description = "HTTP mode: HTTPS on 443 with Let's Encrypt certificates for each domain (HTTP-01 on port 80, which then redirects to HTTPS), as inletsctl's --letsencrypt/--no-letsencrypt. Null: inletsctl's default on a cloud provider, on in mode http with domains on http_port 80. Point the domains' DNS at the server; using it accepts the CA's terms."
  type        = bool
  default     = null
}

variable "letsencrypt_email" {
  description = "Contact address for the Let's Encrypt account (expiry notices), as inletsctl's --letsencrypt-email: printable ASCII (the server's unit quotes it as inletsctl does). Null or empty: none."
  type        = string
  default     = null
  validation {
    condition     = var.letsencrypt_email == null ? true : var.letsencrypt_email == "" || can(regex("^[^@:/]+@[^@:/]+\\.[^@:/]+$", var.letsencrypt_email)) && can(regex("^[!-~]+$", var.letsencrypt_email))
    error_message = "The letsencrypt_email must be an email address such as ops@example.com: printable ASCII, one @, a dot in the domain, no spaces, colons or slashes."
  }
}

variable "letsencrypt_issuer" {
  description = "The ACME CA, as inletsctl's --letsencrypt-issuer: prod, staging (for trials: no rate limits, untrusted certificates) or an https:// ACME directory URL (a host name, optionally a port, then printable ASCII), passed to the server as written."
  type        = string
  default     = "prod"
  nullable    = false
  validation {
    # as inletsctl's directory_url() (runtime/acme/store.py): the scheme in any case, and a port of up to 5 digits
    # (leading zeros and all: 08443 is 8443) or none after the colon (443), as the server's ACME client reads them
    condition = contains(["prod", "staging"], var.letsencrypt_issuer) || (
      can(regex("^(?i:https)://[A-Za-z0-9._~-]+(?::[0-9]{0,5})?(?:[/?#][!-~]*)?$", var.letsencrypt_issuer))
      && alltrue([for port in regexall("^(?i:https)://[^/?#:]+:([0-9]+)", var.letsencrypt_issuer) : tonumber(port[0]) >= 1 && tonumber(port[0]) <= 65535])
    )
    error_message = "The letsencrypt_issuer must be prod, staging or an https:// ACME directory URL such as https://acme.example.com:14000/dir (a host name, an optional port 1-65535, then printable ASCII without spaces)."
  }
}

variable "letsencrypt_ca" {
  description = "PEM certificates (a private ACME CA's root, e.g. step-ca's) the server verifies a letsencrypt_issuer URL's HTTPS with, as inletsctl's --letsencrypt-ca: written to /etc/inlets/letsencrypt-ca.crt, certificates only, re-wrapped as inletsctl writes them (e.g. file(\"root_ca.crt\")). Null: the system's CAs."
  type        = string
  default     = null
  validation {
    condition = var.letsencrypt_ca == null ? true : length(regexall("-----BEGIN (?:X509 )?CERTIFICATE-----", var.letsencrypt_ca)) > 0 && alltrue([
      for block in regexall("-----BEGIN (?:X509 )?CERTIFICATE-----([^-]*)-----END (?:X509 )?CERTIFICATE-----", var.letsencrypt_ca) :
      can(regex("^MI[I-L][A-Za-z0-9+/]{5,}={0,2}$", replace(block[0], "/\\s+/", ""))) && length(replace(block[0], "/\\s+/", "")) % 4 == 0
    ]) && length(regexall("-----BEGIN (?:X509 )?CERTIFICATE-----", var.letsencrypt_ca)) == length(regexall("-----BEGIN (?:X509 )?CERTIFICATE-----[^-]*-----END (?:X509 )?CERTIFICATE-----", var.letsencrypt_ca))
    error_message = "The letsencrypt_ca must hold PEM certificates (-----BEGIN CERTIFICATE----- base64 -----END CERTIFICATE-----), such as your ACME CA's root: give its file, e.g. file(\"root_ca.crt\")."
  }
}
