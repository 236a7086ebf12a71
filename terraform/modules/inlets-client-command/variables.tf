variable "host" {
  description = "Public IP address (or DNS name) of the exit server."
  type        = string
}

variable "mode" {
  description = "Tunnel mode: tcp or http."
  type        = string
  default     = "tcp"
  validation {
    condition     = contains(["tcp", "http"], var.mode)
    error_message = "The mode must be tcp or http."
  }
}

variable "ports" {
  description = "TCP mode: the data ports the client serves."
  type        = list(number)
  default     = []
}

variable "domains" {
  description = "HTTP mode: the domains the client serves (none: catch-all)."
  type        = list(string)
  default     = []
}

variable "control_port" {
  description = "The control-plane port."
  type        = number
  default     = 8123
}

variable "upstream" {
  description = "What the client forwards to: a host for tcp (default 127.0.0.1), a URL for http (default http://127.0.0.1:8080)."
  type        = string
  default     = null
}

variable "token_file" {
  description = "Where the client reads the token (the README writes it with terraform output -raw token)."
  type        = string
  default     = "inlets-token"
}

variable "ca_file" {
  description = "Where the client reads the CA certificate it pins."
  type        = string
  default     = "inlets-ca.crt"
}

variable "inlets" {
  description = "The inlets command."
  type        = string
  default     = "inlets"
}
