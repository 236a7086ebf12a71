# Renders the same #cloud-config document as inletsctl (provisioner/render.py) from
# templates generated out of inletsctl's jinja2 templates by
# scripts/gen_terraform_template.py. Values computed here mirror render.user_data():
# the tests compare the two renderings byte for byte.

locals {
  generated = jsondecode(file("${path.module}/templates/generated.json"))
  # as inlets reads a token file (each line stripped) and push_wheel.py its INLETS_TOKEN: file("inlets-token") of
  # a file ending in a line break, as inletsctl writes one, gives the token itself
  token = trimspace(var.token)

  ports     = var.mode == "tcp" ? (var.ports == null ? [80, 443] : var.ports) : []
  ports_csv = join(",", [for p in local.ports : format("%d", p)])
  http_port = var.http_port == null ? 80 : var.http_port
  domains   = var.mode == "http" ? distinct([for d in var.domains : trimsuffix(lower(trimspace(d)), ".")]) : []

  # ttl: inletsctl's syntax, in seconds
  ttl_parts = var.ttl == null ? null : regex("^(?:(\\d+)d)?(?:(\\d+)h)?(?:(\\d+)m)?(?:(\\d+)s)?$", trimspace(var.ttl))
  ttl_seconds = local.ttl_parts == null ? null : sum([
    for i, unit in [86400, 3600, 60, 1] : local.ttl_parts[i] == null || local.ttl_parts[i] == "" ? 0 : tonumber(local.ttl_parts[i]) * unit
  ])

  # inletsctl's range, 1s to 365d: beyond it timeadd() fails in Go's words ("time: invalid duration")
  ttl_in_range = local.ttl_seconds == null ? true : local.ttl_seconds >= 1 && local.ttl_seconds <= 365 * 86400

  # expiry: the timestamp strings inletsctl writes, and the Unix time of its expiry tag
  expires_at = local.ttl_seconds == null || var.created_at == null || !local.ttl_in_range ? null : timeadd(var.created_at, "${local.ttl_seconds}s")
  expires = local.expires_at == null ? null : {
    iso         = formatdate("YYYY-MM-DD'T'hh:mm:ss'Z'", local.expires_at)
    on_calendar = formatdate("YYYY-MM-DD hh:mm:ss 'UTC'", local.expires_at)
  }
  created_parts = var.created_at == null ? null : [for x in regex("^(\\d{4})-(\\d{2})-(\\d{2})T(\\d{2}):(\\d{2}):(\\d{2})", var.created_at) : tonumber(x)]
  # days since 1970-01-01 of a civil date (H. Hinnant's days_from_civil)
  civil_y   = local.created_parts == null ? 0 : local.created_parts[0] - (local.created_parts[1] <= 2 ? 1 : 0)
  civil_era = floor(local.civil_y / 400)
  civil_yoe = local.civil_y - local.civil_era * 400
  civil_doy = local.created_parts == null ? 0 : floor((153 * ((local.created_parts[1] + 9) % 12) + 2) / 5) + local.created_parts[2] - 1
  civil_doe = local.civil_yoe * 365 + floor(local.civil_yoe / 4) - floor(local.civil_yoe / 100) + local.civil_doy
  created_unix = local.created_parts == null ? null : (
    (local.civil_era * 146097 + local.civil_doe - 719468) * 86400
    + local.created_parts[3] * 3600 + local.created_parts[4] * 60 + local.created_parts[5]
  )
  expires_unix = local.expires == null ? null : local.created_unix + local.ttl_seconds

  # Let's Encrypt: inletsctl's default on a cloud provider (provisioner/create.py _letsencrypt()), and its
  # flags ending the server's command line (their names, order and the drop-in are generated.json's,
  # read off inletsctl's server_argv()), each word quoted as systemd_quote.exec_word() quotes it
  letsencrypt    = var.mode == "http" && (var.letsencrypt != null ? var.letsencrypt : length(local.domains) > 0 && local.http_port == 80)
  le_flags       = local.generated.letsencrypt_flags
  le_email       = var.letsencrypt_email == null ? "" : var.letsencrypt_email
  le_words       = concat(flatten([for d in local.domains : [local.le_flags.domain, d]]), local.le_email == "" ? [] : [local.le_flags.email, local.le_email], [local.le_flags.issuer, var.letsencrypt_issuer], local.le_ca == null ? [] : [local.le_flags.ca, local.generated.letsencrypt_ca_path])
  le_args        = join(" ", [for w in local.le_words : can(regex("^[A-Za-z0-9_@+=:,./-]+$", w)) ? w : "\"${replace(replace(replace(replace(w, "\\", "\\\\"), "\"", "\\\""), "%", "%%"), "$", "$$")}\""])
  unit_template  = local.letsencrypt ? "http-letsencrypt" : var.mode
  runtime_name   = local.letsencrypt ? "http-letsencrypt" : var.mode
  le_domains_ok  = alltrue([for d in local.domains : strcontains(d, ".") && !can(regex("\\.[0-9]+$", d))])
  le_issuer_used = var.letsencrypt_issuer != "prod" || local.le_email != "" || var.letsencrypt_ca != null

  # letsencrypt_ca as inletsctl's _ca_bundle() writes it (cryptography's PEM of each certificate): the base64 of
  # every CERTIFICATE block, whatever its wrapping, line ends or surrounding text, re-wrapped at 64 characters
  le_ca_blocks = var.letsencrypt_ca == null ? [] : [
    for block in regexall("-----BEGIN (?:X509 )?CERTIFICATE-----([^-]*)-----END (?:X509 )?CERTIFICATE-----", var.letsencrypt_ca) : replace(block[0], "/\\s+/", "")
  ]
  le_ca = var.letsencrypt_ca == null ? null : join("", [
    for b in local.le_ca_blocks : "-----BEGIN CERTIFICATE-----\n${join("\n", regexall(".{1,64}", b))}\n-----END CERTIFICATE-----\n"
  ])
  # where inletsctl parses each certificate (and the server loads its own at boot), this reads the length its
  # DER starts with (30 82 HH LL) off the base64: a block cut short (a partial copy and paste) holds fewer bytes
  # than it says
  b64_digits = split("", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
  pem_blocks = {
    letsencrypt_ca = local.le_ca_blocks
    server_cert    = [for block in regexall("-----BEGIN (?:X509 )?CERTIFICATE-----([^-]*)-----END (?:X509 )?CERTIFICATE-----", var.server_cert) : replace(block[0], "/\\s+/", "")]
  }
  pem_whole = { for name, blocks in local.pem_blocks : name => alltrue([for b in blocks : try(
    4 + ((index(local.b64_digits, substr(b, 2, 1)) % 4) * 64 + index(local.b64_digits, substr(b, 3, 1))) * 256
    + index(local.b64_digits, substr(b, 4, 1)) * 4 + floor(index(local.b64_digits, substr(b, 5, 1)) / 16)
    == length(b) / 4 * 3 - length(regexall("=", b)), false
  )]) }

  service_unit = ["inlets.service", templatefile("${path.module}/templates/inlets.service.${local.unit_template}.tftpl", {
    control_port     = format("%d", var.control_port)
    ports            = local.ports_csv
    http_port        = format("%d", local.http_port)
    letsencrypt_args = local.le_args
  })]
  # the units the creation time does not change: the server's, and Let's Encrypt's drop-in for it
  base_units = concat(
    [local.service_unit],
    local.letsencrypt ? [[local.generated.letsencrypt_dropin, file("${path.module}/templates/inlets-letsencrypt.conf.tftpl")]] : [],
  )
  units = concat(
    local.base_units,
    local.expires == null ? [] : [
      ["inlets-expire.service", templatefile("${path.module}/templates/inlets-expire.service.tftpl", {
        expires_at = local.expires.iso
      })],
      ["inlets-expire.timer", templatefile("${path.module}/templates/inlets-expire.timer.tftpl", {
        expires_at  = local.expires.iso
        on_calendar = local.expires.on_calendar
      })],
    ],
  )

  # The runtime: inletsctl's server-only wheel for the mode (runtime/MODE.json, generated with its
  # pinned dependencies; with Let's Encrypt runtime/http-letsencrypt.json, which adds its ACME client),
  # or the one given; var.package installs a pip requirement instead.
  runtime        = jsondecode(file("${path.module}/runtime/${local.runtime_name}.json"))
  use_wheel      = var.package == null
  wheel_filename = coalesce(var.wheel_filename, local.runtime.wheel_filename)
  wheel_xz       = var.wheel_xz_base64 == null ? local.runtime.wheel_xz_base64 : replace(var.wheel_xz_base64, "/\\s+/", "") # one line: the user-data's plain scalar
  wheel_sha256   = var.wheel_xz_base64 == null ? local.runtime.wheel_sha256 : var.wheel_sha256
  wheel_path     = "/opt/inlets/${local.wheel_filename}"
  constraints    = !local.use_wheel ? [] : var.constraints != null ? var.constraints : tolist(local.runtime.constraints)
  embedded = local.use_wheel ? {
    path    = local.wheel_path
    xz_path = "${local.wheel_path}.xz"
    b64     = local.wheel_xz
    unpack  = local.generated.unpack_xz
  } : null
  pushed = local.use_wheel ? {
    script_path = local.generated.receiver_script_path
    script      = local.generated.receiver_script
    port        = format("%d", var.control_port)
    sha256      = local.wheel_sha256
    wheel_path  = local.wheel_path
  } : null
  package = local.use_wheel ? local.wheel_path : var.package

  # everything in the user-data but the units, whose expiry timer follows created_at
  template_base = {
    name        = var.name
    mode        = var.mode
    user        = local.generated.service_user
    config_dir  = local.generated.config_dir
    files       = local.generated.files
    token       = local.token
    server_cert = var.server_cert
    server_key  = var.server_key
    constraints = local.constraints
    package     = local.package
    # inletsctl's --letsencrypt-ca (a private ACME CA's bundle), with Let's Encrypt only (a precondition says so)
    letsencrypt_ca = local.letsencrypt && local.le_ca != null ? { path = local.generated.letsencrypt_ca_path, pem = local.le_ca } : null
    # net.core.rmem_max raised to the UDP ports' receive buffer, in TCP mode (UDP rides it), as inletsctl's udp_sysctl()
    sysctl = var.mode == "tcp" ? local.generated.sysctl : null
  }
  template_vars      = merge(local.template_base, { units = local.units, expires = local.expires })
  user_data_embedded = templatefile("${path.module}/templates/user-data.yaml.tftpl", merge(local.template_vars, { wheel = local.embedded, receiver = null }))
  user_data_pushed   = templatefile("${path.module}/templates/user-data.yaml.tftpl", merge(local.template_vars, { wheel = null, receiver = local.pushed }))
  # bytes, not characters: base64 is 4 characters per 3 bytes, less its padding
  embedded_base64 = base64encode(local.user_data_embedded)
  embedded_bytes  = nonsensitive(length(local.embedded_base64) / 4 * 3 - length(regexall("=", local.embedded_base64)))
  # "auto" is inletsctl's fitting_user_data(): the wheel embedded where that leaves embed_margin
  # bytes of the limit unused (a user-data that fits by a few bytes would not after the code grows)
  wheel_delivery   = var.wheel_delivery != "auto" ? var.wheel_delivery : local.embedded_bytes <= var.limit - local.generated.embed_margin ? "embed" : "push"
  user_data        = local.use_wheel && local.wheel_delivery == "push" ? local.user_data_pushed : local.user_data_embedded
  user_data_base64 = base64encode(local.user_data)
  user_data_bytes  = nonsensitive(length(local.user_data_base64) / 4 * 3 - length(regexall("=", local.user_data_base64)))

  # The user-data less its creation time: both renderings without the expiry, with what picks one and what
  # sets the expiry's distance (the expiry's text has one length, so the pick cannot turn on created_at).
  # It must not read var.created_at: the exit-server modules take a new creation time when it changes.
  template_timeless = merge(local.template_base, { units = local.base_units, expires = null })
  vm_key = nonsensitive(sha256(jsonencode([
    local.ttl_seconds, var.wheel_delivery, var.limit,
    sha256(templatefile("${path.module}/templates/user-data.yaml.tftpl", merge(local.template_timeless, { wheel = local.embedded, receiver = null }))),
    sha256(templatefile("${path.module}/templates/user-data.yaml.tftpl", merge(local.template_timeless, { wheel = null, receiver = local.pushed }))),
  ])))

  # sorted by number, as provisioner/firewall.py's inbound_ports()
  firewall_wanted = var.mode == "tcp" ? concat([var.control_port], local.ports) : [local.http_port, 443, var.control_port]
  firewall_ports  = [for p in sort(distinct([for p in local.firewall_wanted : format("%05d", p)])) : tonumber(p)]
}
