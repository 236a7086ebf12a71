variable "host" {
  description = "Public IP address (or DNS name) of the exit server."
  type        = string
  validation {
    # as the client reads --url's host: an IPv6 address (bracketed in the URL here), an IPv4 address without leading
    # zeros, or a DNS name ("[::1]" made wss://[[::1]]:8123, and "example.com:8123" a bracketed name)
    condition = (strcontains(var.host, ":") ? can(cidrhost("${var.host}/128", 0)) :
      can(regex("^[0-9.]+$", var.host)) ? can(regex("^(?:0|[1-9][0-9]*)(?:\\.(?:0|[1-9][0-9]*)){3}$", var.host)) && can(cidrhost("${var.host}/32", 0)) :
    can(regex("^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\\.)*[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\\.?$", var.host)) && length(trimsuffix(var.host, ".")) <= 253)
    error_message = "The host must be the exit server's IP address (IPv6 without brackets) or DNS name, without a port, scheme or path."
  }
}

variable "mode" {
  description = "Tunnel mode: tcp or http."
  type        = string
  default     = "tcp"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    condition     = contains(["tcp", "http"], var.mode)
    error_message = "The mode must be tcp or http."
  }
}

variable "ports" {
  description = "TCP mode: the data ports the client serves."
  type        = list(number)
  default     = []
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    condition     = alltrue([for p in var.ports : try(p == floor(p) && p >= 1 && p <= 65535, false)]) && length(distinct(var.ports)) == length(var.ports)
    error_message = "The ports must be distinct whole numbers from 1 to 65535, as the client's --ports."
  }
}

variable "domains" {
  description = "HTTP mode: the domains the client serves (none: catch-all)."
  type        = list(string)
  default     = []
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    condition     = alltrue([for d in var.domains : try(can(regex("^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", trimsuffix(lower(trimspace(d)), "."))) && length(trimsuffix(lower(trimspace(d)), ".")) <= 253, false)])
    error_message = "Every domain must be a valid DNS name, such as example.com."
  }
}

variable "control_port" {
  description = "The control-plane port."
  type        = number
  default     = 8123
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    condition     = var.control_port == floor(var.control_port) && var.control_port >= 1 && var.control_port <= 65535
    error_message = "The control_port must be a port from 1 to 65535."
  }
}

variable "upstream" {
  description = "What the client forwards to: a host for tcp (default 127.0.0.1), a URL for http (default http://127.0.0.1:8080)."
  type        = string
  default     = null
  validation {
    condition     = var.upstream == null ? true : trimspace(var.upstream) != ""
    error_message = "The upstream is empty: give a host for mode tcp (e.g. 127.0.0.1) or a URL for mode http (e.g. http://127.0.0.1:8080), or leave it null for that default."
  }
}

variable "token_file" {
  description = "Where the client reads the token (the README writes it with terraform output -raw token)."
  type        = string
  default     = "inlets-token"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    # "" was printed as --token-file '', which the client reads as the current folder
    condition     = var.token_file != ""
    error_message = "The token_file is empty: give the path of the file the client reads the token from, such as inlets-token."
  }
}

variable "ca_file" {
  description = "Where the client reads the CA certificate it pins."
  type        = string
  default     = "inlets-ca.crt"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    # "" was printed as --tls-ca '', which the client reads as the current folder
    condition     = var.ca_file != ""
    error_message = "The ca_file is empty: give the path of the CA certificate the client pins, such as inlets-ca.crt."
  }
}

variable "inlets" {
  description = "The inlets command."
  type        = string
  default     = "inlets"
  nullable    = false # null (a wrapper's unset input) is the default, not an error deep in a function
  validation {
    # "" was printed as '' tcp client ..., a command no shell runs
    condition     = trimspace(var.inlets) != ""
    error_message = "The inlets command is empty: give the command that runs the client, such as inlets or /opt/inlets/venv/bin/inlets."
  }
}
