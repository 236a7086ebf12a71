# terraform test of the userdata module: no provider, no network. The byte-for-byte
# comparison with inletsctl's rendering is tests/test_terraform.py (it needs Python).

variables {
  name  = "tftest"
  token = "0123456789abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCD"
  # a real certificate (the step-ca root below): plan checks its DER length, as the server loads it at boot
  server_cert = "-----BEGIN CERTIFICATE-----\nMIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRaW5sZXRzIENBIHN0ZXAtY2EwHhcNMjYxMjA0MjMzMTI5WhcN\nMzYxMjAxMjMzMTI5WjAcMRowGAYDVQQDDBFpbmxldHMgQ0Egc3RlcC1jYTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABGZ9p5xPobfCoAscAOK1k54R+/7Pxl5sIywN\nkoF/Dbeq/dVbvT9lg+PMpT6WPMQKUS9Qzj4sBysdH+kayCefSE6jRTBDMBIGA1Ud\nEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBR2HXrk/Wfd\nEwto/jRYp1UC4MRuRjAKBggqhkjOPQQDAgNIADBFAiEA3EiAobK3RAAl/0LFOhkC\nDr8GoFP+jjuITMYyZlbXfTQCIBXWSfG7kvddtrze5KrY8AlGL1Y5qOEzQUym74tx\n7PhW\n-----END CERTIFICATE-----\n"
  server_key  = "-----BEGIN PRIVATE KEY-----\nMIGHfake\n-----END PRIVATE KEY-----\n"
  limit       = 262144 # GCE's: no embedded server wheel fits DigitalOcean's 64 KiB any more (its module pushes it)
}

run "tcp_defaults" {
  assert {
    condition     = strcontains(output.user_data, "inlets tcp server --control-port 8123 --token-file /etc/inlets/token --tls-cert /etc/inlets/server.crt --tls-key /etc/inlets/server.key --allow-ports 80,443\n")
    error_message = "The unit must run the tcp server with inletsctl's flags."
  }
  assert {
    condition     = startswith(output.user_data, "#cloud-config\n# inlets exit server \"tftest\" (tcp mode)")
    error_message = "The user-data must start with #cloud-config."
  }
  assert {
    condition     = output.firewall_ports == [80, 443, 8123]
    error_message = "TCP mode opens the control port and the data ports."
  }
  assert {
    condition     = output.expires_at == null && !strcontains(output.user_data, "inlets-expire")
    error_message = "No ttl, no expiry timer."
  }
  assert {
    condition     = strcontains(output.user_data, "      -----BEGIN CERTIFICATE-----\n      MIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIw\n      HDEaMBgGA1UEAwwRaW5sZXRzIENBIHN0ZXAtY2EwHhcNMjYxMjA0MjMzMTI5WhcN\n") && strcontains(output.user_data, "      7PhW\n      -----END CERTIFICATE-----\n  - path: /etc/inlets/server.key")
    error_message = "The certificate must be indented into its block scalar."
  }
  assert {
    condition     = strcontains(output.user_data, "--constraint, /opt/inlets/constraints.txt, \"/opt/inlets/inlets_py-") && strcontains(output.user_data, "encoding: b64\n")
    error_message = "The embedded server wheel, its dependencies pinned, is the default where it fits (GCE's 256 KiB)."
  }
  assert {
    condition     = startswith(yamldecode(output.user_data).runcmd[0], "set -eu")
    error_message = "The boot script stops at the first failing step."
  }
}

# The module's defaults (DigitalOcean's 64 KiB, wheel_delivery auto) plan: no server wheel embedded fits
# 64 KiB with inletsctl's 4 KiB to spare, so it is pushed, as inletsctl create does.
run "defaults_plan_with_the_wheel_pushed" {
  command = plan
  variables {
    limit = null # the default, 65536
  }
  assert {
    condition     = output.wheel.delivery == "push" && strcontains(output.user_data, "/opt/inlets/receive-wheel.py") && output.user_data_bytes <= 65536
    error_message = "With the defaults the wheel is pushed (it does not fit 64 KiB with 4 KiB to spare) and the plan succeeds."
  }
}

run "defaults_plan_in_http_mode" {
  command = plan
  variables {
    limit   = null
    mode    = "http"
    domains = ["example.com"]
  }
  assert {
    condition     = output.letsencrypt && output.wheel.delivery == "push" && output.user_data_bytes <= 65536
    error_message = "With the defaults HTTP mode (Let's Encrypt on) plans, the wheel pushed."
  }
}

run "rejects_an_explicit_embed_over_the_limit" {
  command = plan
  variables {
    limit          = null
    mode           = "http"
    wheel_delivery = "embed"
  }
  expect_failures = [output.user_data]
}

run "pushed_wheel" {
  variables {
    wheel_delivery = "push"
  }
  assert {
    condition     = !strcontains(output.user_data, "encoding: b64") && strcontains(output.user_data, "/opt/inlets/receive-wheel.py, --port, \"8123\"")
    error_message = "A pushed wheel is not in the user-data: the VM waits for it on the control port."
  }
  assert {
    condition     = output.wheel.delivery == "push" && length(output.wheel.sha256) == 64 && strcontains(output.user_data, output.wheel.sha256)
    error_message = "The user-data names the digest the pushed wheel must have."
  }
}

run "auto_delivery_follows_the_limit" {
  variables {
    wheel_delivery = "auto"
    limit          = 16 * 1024
  }
  assert {
    condition     = output.wheel.delivery == "push" && strcontains(output.user_data, "/opt/inlets/receive-wheel.py")
    error_message = "auto sends a wheel that does not fit the limit, as inletsctl create does."
  }
}

run "auto_delivery_embeds_what_fits" {
  variables {
    wheel_delivery = "auto"
    limit          = 256 * 1024 # GCE's: the TCP wheel no longer fits 64 KiB with 4 KiB to spare
  }
  assert {
    condition     = output.wheel.delivery == "embed" && strcontains(output.user_data, "encoding: b64")
    error_message = "auto embeds a wheel that fits the limit with 4 KiB to spare, as inletsctl create does."
  }
}

run "runtime_spec" {
  variables {
    package = "inlets-py==0.2.0"
  }
  assert {
    condition     = strcontains(output.user_data, "install, --quiet, --no-cache-dir, --disable-pip-version-check, \"inlets-py==0.2.0\"]") && !strcontains(output.user_data, "constraints") && output.wheel == null
    error_message = "A package spec is installed instead of the wheel."
  }
}

run "rejects_a_runtime_spec_on_two_lines" {
  command = plan
  variables {
    package = "inlets-py\n  - [sh, -c, reboot]"
  }
  expect_failures = [var.package]
}

# YAML may not carry U+FFFE or U+FFFF raw, which jsonencode writes so: cloud-init refused the file (a probe's finding)
run "rejects_a_name_with_a_noncharacter" {
  command = plan
  variables {
    name = "exit\uFFFE1"
  }
  expect_failures = [var.name]
}

run "tcp_low_ports_with_ttl" {
  variables {
    ports      = [25, 5432]
    ttl        = "1d2h"
    created_at = "2030-01-02T03:04:05Z"
  }
  assert {
    condition     = output.firewall_ports == [25, 5432, 8123]
    error_message = "Ports under 1024 are opened too."
  }
  assert {
    condition     = output.expires_at == "2030-01-03T05:04:05Z" && output.expires_unix == 1893647045
    error_message = "Expiry is created_at plus the ttl."
  }
  assert {
    condition     = strcontains(output.user_data, "OnCalendar=2030-01-03 05:04:05 UTC") && strcontains(output.user_data, "- [systemctl, enable, --now, inlets-expire.timer]")
    error_message = "The expiry timer is installed and enabled."
  }
}

run "expiry_across_a_leap_day" {
  variables {
    ttl        = "2h"
    created_at = "2024-02-28T23:00:00Z"
  }
  assert {
    condition     = output.expires_at == "2024-02-29T01:00:00Z" && output.expires_unix == 1709168400
    error_message = "Unix time must follow the calendar."
  }
}

run "expiry_across_new_year" {
  variables {
    ttl        = "30s"
    created_at = "2031-01-01T00:00:00.250Z"
  }
  assert {
    condition     = output.expires_at == "2031-01-01T00:00:30Z" && output.expires_unix == 1924992030
    error_message = "Fractions of a second are dropped, as inletsctl does."
  }
}

run "http_mode" {
  variables {
    mode      = "http"
    http_port = 8080
    domains   = ["Example.com.", "example.com", "api.example.com"]
    limit     = 262144 # GCE's: the HTTP wheel embedded is over 64 KiB (DigitalOcean's modules push it)
  }
  assert {
    condition     = strcontains(output.user_data, "inlets http server --control-port 8123 --token-file /etc/inlets/token --tls-cert /etc/inlets/server.crt --tls-key /etc/inlets/server.key --port 8080\n")
    error_message = "The unit must run the http server on the HTTP port."
  }
  assert {
    condition     = output.firewall_ports == [443, 8080, 8123] && length(output.ports) == 0
    error_message = "HTTP mode opens the HTTP port, 443 and the control port."
  }
  assert {
    condition     = jsonencode(output.domains) == jsonencode(["example.com", "api.example.com"])
    error_message = "Domains are normalised as inletsctl does."
  }
}

run "embedded_wheel" {
  variables {
    wheel_filename  = "inlets_py-0.1.0-py3-none-any.whl"
    wheel_xz_base64 = "/Td6WFoAAATm1rRGAgAhARYAAAB0L+WjAQAEZmFrZQAAAAA="
    wheel_sha256    = "0000000000000000000000000000000000000000000000000000000000000000"
  }
  assert {
    condition     = strcontains(output.user_data, "encoding: b64\n    content: /Td6WFoAAATm1rRGAgAhARYAAAB0L+WjAQAEZmFrZQAAAAA=\n")
    error_message = "The wheel travels base64-encoded."
  }
  assert {
    condition     = strcontains(output.user_data, "/opt/inlets/constraints.txt, \"/opt/inlets/inlets_py-0.1.0-py3-none-any.whl\"]")
    error_message = "pip installs the embedded wheel instead of the package spec."
  }
}

run "rejects_an_unknown_mode" {
  command = plan
  variables {
    mode = "udp"
  }
  expect_failures = [var.mode]
}

run "rejects_a_data_port_on_the_control_port" {
  command = plan
  variables {
    ports = [80, 8123]
  }
  expect_failures = [output.user_data]
}

run "rejects_ports_in_http_mode" {
  command = plan
  variables {
    mode  = "http"
    ports = [80]
  }
  expect_failures = [output.user_data]
}

run "rejects_a_bad_port" {
  command = plan
  variables {
    ports = [0, 70000]
  }
  expect_failures = [var.ports]
}

run "rejects_a_null_domain" {
  command = plan
  variables {
    mode    = "http"
    domains = ["example.com", null] # refused by the rule, not an error inside Terraform's trimspace()
  }
  expect_failures = [var.domains]
}

run "rejects_a_null_port" {
  command = plan
  variables {
    ports = [80, null] # a wrapper's unset element: refused by the rule, not an error inside Terraform's floor()
  }
  expect_failures = [var.ports]
}

run "rejects_a_ttl_without_created_at" {
  command = plan
  variables {
    ttl = "2h"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_malformed_ttl" {
  command = plan
  variables {
    ttl        = "2 hours"
    created_at = "2030-01-02T03:04:05Z"
  }
  expect_failures = [var.ttl]
}

run "rejects_a_zero_ttl" {
  command = plan
  variables {
    ttl        = "0s"
    created_at = "2030-01-02T03:04:05Z"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_ttl_over_365d" {
  command = plan
  variables {
    ttl        = "366d"
    created_at = "2030-01-02T03:04:05Z"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_ttl_past_what_timeadd_takes" {
  command = plan
  variables {
    ttl        = "99999999d"
    created_at = "2030-01-02T03:04:05Z"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_non_utc_created_at" {
  command = plan
  variables {
    ttl        = "2h"
    created_at = "2030-01-02T03:04:05+01:00"
  }
  expect_failures = [var.created_at]
}

run "rejects_user_data_over_the_limit" {
  command = plan
  variables {
    limit = 1024
  }
  expect_failures = [output.user_data]
}

run "rejects_a_wheel_without_its_content" {
  command = plan
  variables {
    wheel_filename = "inlets_py-0.1.0-py3-none-any.whl"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_constraint_on_two_lines" {
  command = plan
  variables {
    constraints = ["cryptography==42.0.5\nruncmd: [reboot]"]
  }
  expect_failures = [var.constraints]
}

run "unwraps_a_wrapped_wheel" {
  command = plan
  variables {
    wheel_filename  = "inlets_py-0.1.0-py3-none-any.whl"
    wheel_xz_base64 = "QUJD\nREVG\r\nR0g=\n"
    wheel_sha256    = "0000000000000000000000000000000000000000000000000000000000000000"
  }
  assert {
    condition     = strcontains(output.user_data, "    content: QUJDREVGR0g=\n") && [for f in yamldecode(output.user_data).write_files : f.content if endswith(f.path, ".xz")] == ["QUJDREVGR0g="]
    error_message = "A wrapped wheel_xz_base64 (as base64 prints it) must be one line in the user-data."
  }
  assert {
    condition     = output.wheel.xz_base64 == "QUJDREVGR0g="
    error_message = "The pushed wheel is the unwrapped one too."
  }
}

run "rejects_a_wheel_that_is_not_base64" {
  command = plan
  variables {
    wheel_filename  = "inlets_py-0.1.0-py3-none-any.whl"
    wheel_xz_base64 = "QUJD: [x]"
    wheel_sha256    = "0000000000000000000000000000000000000000000000000000000000000000"
  }
  expect_failures = [var.wheel_xz_base64]
}

run "rejects_a_name_with_control_characters" {
  command = plan
  variables {
    name = "exit\u0085runcmd"
  }
  expect_failures = [var.name]
}

run "rejects_data_port_22_where_sshd_listens" {
  command = plan
  variables {
    ports = [22, 80]
  }
  expect_failures = [var.ports]
}

run "rejects_http_port_22_where_sshd_listens" {
  command = plan
  variables {
    mode      = "http"
    http_port = 22
    limit     = 262144 # the HTTP wheel embedded fits: only the port is wrong
  }
  expect_failures = [var.http_port]
}

run "rejects_control_port_22_where_sshd_listens" {
  command = plan
  variables {
    control_port = 22
  }
  expect_failures = [var.control_port]
}

run "rejects_a_zero_limit" {
  command = plan
  variables {
    limit = 0
  }
  expect_failures = [var.limit]
}

run "rejects_a_negative_limit" {
  command = plan
  variables {
    limit = -65536
  }
  expect_failures = [var.limit]
}

run "rejects_a_fractional_limit" {
  command = plan
  variables {
    limit = 16384.5
  }
  expect_failures = [var.limit]
}

run "rejects_a_created_at_that_does_not_exist" {
  command = plan
  variables {
    ttl        = "2h"
    created_at = "2030-02-30T25:04:05Z"
  }
  expect_failures = [var.created_at]
}

# its expiry fell in the year 10000: Terraform's formatdate() error, not the module's words
run "rejects_a_created_at_whose_expiry_passes_the_year_9999" {
  command = plan
  variables {
    ttl        = "2h"
    created_at = "9999-12-31T23:00:00Z"
  }
  expect_failures = [var.created_at]
}

# vm_key: what the exit-server modules take a new creation time on. It follows every change of
# the user-data (each replaces the VM) except the expiry that created_at itself moves.
run "vm_key_base" {
  command = plan
  variables {
    ttl        = "2h"
    created_at = "2030-01-02T03:04:05Z"
  }
}

run "vm_key_ignores_created_at" {
  command = plan
  variables {
    ttl        = "120m" # the same ttl in other words: the same user-data
    created_at = "2031-06-07T08:09:10Z"
  }
  assert {
    condition     = output.vm_key == run.vm_key_base.vm_key && output.expires_at != run.vm_key_base.expires_at
    error_message = "A new creation time must not change vm_key (the exit-server modules take one when it changes)."
  }
}

run "vm_key_follows_the_ports" {
  command = plan
  variables {
    ports      = [80, 443, 5432]
    ttl        = "2h"
    created_at = "2030-01-02T03:04:05Z"
  }
  assert {
    condition     = output.vm_key != run.vm_key_base.vm_key
    error_message = "New ports change the user-data, which replaces the VM: vm_key must change."
  }
}

run "vm_key_follows_the_mode" {
  command = plan
  variables {
    mode       = "http"
    limit      = 262144
    ttl        = "2h"
    created_at = "2030-01-02T03:04:05Z"
  }
  assert {
    condition     = output.vm_key != run.vm_key_base.vm_key
    error_message = "Another mode replaces the VM: vm_key must change."
  }
}

run "vm_key_follows_the_control_port" {
  command = plan
  variables {
    control_port = 9443
    ttl          = "2h"
    created_at   = "2030-01-02T03:04:05Z"
  }
  assert {
    condition     = output.vm_key != run.vm_key_base.vm_key
    error_message = "Another control port replaces the VM: vm_key must change."
  }
}

run "vm_key_follows_the_ttl" {
  command = plan
  variables {
    ttl        = "3h"
    created_at = "2030-01-02T03:04:05Z"
  }
  assert {
    condition     = output.vm_key != run.vm_key_base.vm_key
    error_message = "Another ttl replaces the VM: vm_key must change."
  }
}

run "vm_key_follows_the_runtime" {
  command = plan
  variables {
    package    = "inlets-py==0.2.0"
    ttl        = "2h"
    created_at = "2030-01-02T03:04:05Z"
  }
  assert {
    condition     = output.vm_key != run.vm_key_base.vm_key
    error_message = "Another runtime replaces the VM: vm_key must change."
  }
}

run "vm_key_follows_the_wheel_delivery" {
  command = plan
  variables {
    wheel_delivery = "push"
    ttl            = "2h"
    created_at     = "2030-01-02T03:04:05Z"
  }
  assert {
    condition     = output.vm_key != run.vm_key_base.vm_key
    error_message = "A pushed wheel replaces the VM (its user-data no longer holds the wheel): vm_key must change."
  }
}

# Let's Encrypt, as inletsctl on a cloud provider: on by default in mode http with domains on port 80.
# Pushed wheel throughout: the Let's Encrypt wheel does not fit the default 64 KiB, and a run expecting
# a failed precondition must fail for its own reason, not for the size.

run "letsencrypt_by_default_for_domains_on_port_80" {
  variables {
    wheel_delivery = "push"
    mode           = "http"
    domains        = ["example.com", "www.example.com"]
  }
  assert {
    condition     = output.letsencrypt && strcontains(output.user_data, "--port 80 --letsencrypt-domain example.com --letsencrypt-domain www.example.com --letsencrypt-issuer prod\n")
    error_message = "HTTP mode with domains on port 80 runs the server with Let's Encrypt for each domain, as inletsctl."
  }
  assert {
    condition     = strcontains(output.user_data, "- path: /etc/systemd/system/inlets.service.d/letsencrypt.conf\n") && strcontains(output.user_data, "StateDirectory=inlets\n")
    error_message = "Let's Encrypt's drop-in gives the server a state folder for its keys."
  }
  assert {
    condition     = output.firewall_ports == [80, 443, 8123]
    error_message = "HTTPS on 443 is opened."
  }
}

run "letsencrypt_email_and_staging" {
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_email  = "ops@example.com"
    letsencrypt_issuer = "staging"
  }
  assert {
    condition     = strcontains(output.user_data, "--letsencrypt-domain example.com --letsencrypt-email ops@example.com --letsencrypt-issuer staging\n")
    error_message = "The email and issuer follow the domains, as in inletsctl's server_argv()."
  }
}

run "letsencrypt_off_without_domains_or_when_asked" {
  variables {
    wheel_delivery = "push"
    mode           = "http"
    domains        = ["example.com"]
    letsencrypt    = false
  }
  assert {
    condition     = !output.letsencrypt && !strcontains(output.user_data, "letsencrypt")
    error_message = "letsencrypt = false is inletsctl's --no-letsencrypt: no flags, no drop-in."
  }
}

run "letsencrypt_off_for_the_catch_all" {
  variables {
    wheel_delivery = "push"
    mode           = "http"
  }
  assert {
    condition     = !output.letsencrypt && !strcontains(output.user_data, "letsencrypt")
    error_message = "Without domains there is nothing to certify: plain HTTP, as inletsctl."
  }
}

run "rejects_an_email_that_is_not_one" {
  command = plan
  variables {
    wheel_delivery    = "push"
    mode              = "http"
    domains           = ["example.com"]
    letsencrypt_email = "ops at example.com"
  }
  expect_failures = [var.letsencrypt_email]
}

run "rejects_an_issuer_that_is_not_https" {
  command = plan
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_issuer = "http://acme.example.com/directory"
  }
  expect_failures = [var.letsencrypt_issuer]
}

run "rejects_an_issuer_port_out_of_range" {
  command = plan
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_issuer = "https://acme.example.com:70000/directory"
  }
  expect_failures = [var.letsencrypt_issuer]
}

# inletsctl's --letsencrypt-issuer takes these (urlsplit lowers the scheme; url_port reads an empty port as 443
# and 08443 as 8443, as the server's ACME client does): plan refused them, the server gets them as written
run "takes_the_issuer_urls_inletsctl_takes" {
  command = plan
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_issuer = "HTTPS://acme.example.com:08443/directory"
  }
  assert {
    condition     = strcontains(output.user_data, " --letsencrypt-issuer HTTPS://acme.example.com:08443/directory\n")
    error_message = "The issuer URL goes to the server as written, as inletsctl writes it."
  }
}

run "takes_an_issuer_url_with_an_empty_port" {
  command = plan
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_issuer = "https://acme.example.com:/directory"
  }
  assert {
    condition     = strcontains(output.user_data, " --letsencrypt-issuer https://acme.example.com:/directory\n")
    error_message = "The issuer URL goes to the server as written, as inletsctl writes it."
  }
}

run "rejects_letsencrypt_in_tcp_mode" {
  command = plan
  variables {
    wheel_delivery = "push"
    letsencrypt    = true
  }
  expect_failures = [output.user_data]
}

run "rejects_letsencrypt_without_domains" {
  command = plan
  variables {
    wheel_delivery = "push"
    mode           = "http"
    letsencrypt    = true
  }
  expect_failures = [output.user_data]
}

run "rejects_letsencrypt_off_port_80" {
  command = plan
  variables {
    wheel_delivery = "push"
    mode           = "http"
    domains        = ["example.com"]
    http_port      = 8080
    letsencrypt    = true
  }
  expect_failures = [output.user_data]
}

run "rejects_letsencrypt_with_control_port_443" {
  command = plan
  variables {
    wheel_delivery = "push"
    mode           = "http"
    domains        = ["example.com"]
    control_port   = 443
  }
  expect_failures = [output.user_data]
}

run "rejects_letsencrypt_for_a_single_label_domain" {
  command = plan
  variables {
    wheel_delivery = "push"
    mode           = "http"
    domains        = ["localhost"]
  }
  expect_failures = [output.user_data]
}

run "rejects_an_email_without_letsencrypt" {
  command = plan
  variables {
    wheel_delivery    = "push"
    mode              = "http"
    domains           = ["example.com"]
    http_port         = 8080
    letsencrypt_email = "ops@example.com"
  }
  expect_failures = [output.user_data]
}

run "vm_key_follows_letsencrypt" {
  command = plan
  variables {
    wheel_delivery = "push"
    mode           = "http"
    domains        = ["example.com"]
    letsencrypt    = false
  }
  assert {
    condition     = output.vm_key != run.letsencrypt_by_default_for_domains_on_port_80.vm_key
    error_message = "Turning Let's Encrypt off replaces the VM: vm_key must change."
  }
}

# letsencrypt_ca: inletsctl's --letsencrypt-ca (a private ACME CA's root), written as inletsctl writes it
# (tests/test_terraform.py compares the bytes with a messier bundle). A real CA certificate: its DER length is checked.
run "letsencrypt_ca_for_a_private_issuer" {
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_issuer = "https://ca.internal.example:9000/acme/acme/directory"
    letsencrypt_ca     = "Bag Attributes\r\n-----BEGIN CERTIFICATE-----\r\nMIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIw\r\nHDEaMBgGA1UEAwwRaW5sZXRzIENBIHN0ZXAtY2EwHhcNMjYxMjA0MjMzMTI5WhcN\r\nMzYxMjAxMjMzMTI5WjAcMRowGAYDVQQDDBFpbmxldHMgQ0Egc3RlcC1jYTBZMBMG\r\nByqGSM49AgEGCCqGSM49AwEHA0IABGZ9p5xPobfCoAscAOK1k54R+/7Pxl5sIywN\r\nkoF/Dbeq/dVbvT9lg+PMpT6WPMQKUS9Qzj4sBysdH+kayCefSE6jRTBDMBIGA1Ud\r\nEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBR2HXrk/Wfd\r\nEwto/jRYp1UC4MRuRjAKBggqhkjOPQQDAgNIADBFAiEA3EiAobK3RAAl/0LFOhkC\r\nDr8GoFP+jjuITMYyZlbXfTQCIBXWSfG7kvddtrze5KrY8AlGL1Y5qOEzQUym74tx\r\n7PhW\r\n-----END CERTIFICATE-----\r\n"
  }
  assert {
    condition     = strcontains(output.user_data, "--letsencrypt-issuer https://ca.internal.example:9000/acme/acme/directory --letsencrypt-ca /etc/inlets/letsencrypt-ca.crt\n")
    error_message = "The server verifies the private issuer with the CA file, as inletsctl's unit."
  }
  assert {
    condition     = strcontains(output.user_data, "  - path: /etc/inlets/letsencrypt-ca.crt\n    permissions: '0644'\n    content: |\n      -----BEGIN CERTIFICATE-----\n      MIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIw\n") && !strcontains(output.user_data, "Bag Attributes") && !strcontains(output.user_data, "\r")
    error_message = "The certificates alone are written, without what surrounds them or CR line ends."
  }
}

run "letsencrypt_ca_rewrapped_at_64" {
  command = plan
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_issuer = "https://ca.internal.example:9000/acme/acme/directory"
    letsencrypt_ca     = "-----BEGIN CERTIFICATE-----\nMIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIwHDEaMBgGA1UEAwwRaW5sZXRzIENBIHN0ZXAtY2EwHhcNMjYxMjA0MjMzMTI5WhcNMzYxMjAxMjMzMTI5WjAcMRowGAYDVQQDDBFpbmxldHMgQ0Egc3RlcC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABGZ9p5xPobfCoAscAOK1k54R+/7Pxl5sIywNkoF/Dbeq/dVbvT9lg+PMpT6WPMQKUS9Qzj4sBysdH+kayCefSE6jRTBDMBIGA1UdEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBR2HXrk/WfdEwto/jRYp1UC4MRuRjAKBggqhkjOPQQDAgNIADBFAiEA3EiAobK3RAAl/0LFOhkCDr8GoFP+jjuITMYyZlbXfTQCIBXWSfG7kvddtrze5KrY8AlGL1Y5qOEzQUym74tx7PhW\n-----END CERTIFICATE-----\n"
  }
  assert {
    condition     = output.vm_key == run.letsencrypt_ca_for_a_private_issuer.vm_key
    error_message = "A certificate on one line is the same file on the VM: wrapped at 64, as inletsctl writes it."
  }
}

run "rejects_a_letsencrypt_ca_that_is_not_pem" {
  command = plan
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_issuer = "https://ca.internal.example:9000/acme/acme/directory"
    letsencrypt_ca     = "/etc/step-ca/root_ca.crt"
  }
  expect_failures = [var.letsencrypt_ca]
}

run "rejects_a_letsencrypt_ca_cut_short" {
  command = plan
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt_issuer = "https://ca.internal.example:9000/acme/acme/directory"
    letsencrypt_ca     = "-----BEGIN CERTIFICATE-----\nMIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRaW5sZXRzIENBIHN0ZXAtY2EwHhcNMjYxMjA0MjMzMTI5WhcN\nMzYxMjAxMjMzMTI5WjAcMRowGAYDVQQDDBFpbmxldHMgQ0Egc3RlcC1jYTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABGZ9p5xPobfCoAscAOK1k54R+/7Pxl5sIywN\nkoF/Dbeq/dVbvT9lg+PMpT6WPMQKUS9Qzj4sBysdH+kayCefSE6jRTBDMBIGA1Ud\nEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBR2HXrk/Wfd\nEwto/jRYp1UC4MRuRjAKBggqhkjOPQQDAgNIADBFAiEA3EiAobK3RAAl/0LFOhkC\n-----END CERTIFICATE-----\n"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_letsencrypt_ca_for_the_public_issuer" {
  command = plan
  variables {
    wheel_delivery = "push"
    mode           = "http"
    domains        = ["example.com"]
    letsencrypt_ca = "-----BEGIN CERTIFICATE-----\nMIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRaW5sZXRzIENBIHN0ZXAtY2EwHhcNMjYxMjA0MjMzMTI5WhcN\nMzYxMjAxMjMzMTI5WjAcMRowGAYDVQQDDBFpbmxldHMgQ0Egc3RlcC1jYTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABGZ9p5xPobfCoAscAOK1k54R+/7Pxl5sIywN\nkoF/Dbeq/dVbvT9lg+PMpT6WPMQKUS9Qzj4sBysdH+kayCefSE6jRTBDMBIGA1Ud\nEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBR2HXrk/Wfd\nEwto/jRYp1UC4MRuRjAKBggqhkjOPQQDAgNIADBFAiEA3EiAobK3RAAl/0LFOhkC\nDr8GoFP+jjuITMYyZlbXfTQCIBXWSfG7kvddtrze5KrY8AlGL1Y5qOEzQUym74tx\n7PhW\n-----END CERTIFICATE-----\n"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_letsencrypt_ca_without_letsencrypt" {
  command = plan
  variables {
    wheel_delivery     = "push"
    mode               = "http"
    domains            = ["example.com"]
    letsencrypt        = false
    letsencrypt_issuer = "https://ca.internal.example:9000/acme/acme/directory"
    letsencrypt_ca     = "-----BEGIN CERTIFICATE-----\nMIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRaW5sZXRzIENBIHN0ZXAtY2EwHhcNMjYxMjA0MjMzMTI5WhcN\nMzYxMjAxMjMzMTI5WjAcMRowGAYDVQQDDBFpbmxldHMgQ0Egc3RlcC1jYTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABGZ9p5xPobfCoAscAOK1k54R+/7Pxl5sIywN\nkoF/Dbeq/dVbvT9lg+PMpT6WPMQKUS9Qzj4sBysdH+kayCefSE6jRTBDMBIGA1Ud\nEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBR2HXrk/Wfd\nEwto/jRYp1UC4MRuRjAKBggqhkjOPQQDAgNIADBFAiEA3EiAobK3RAAl/0LFOhkC\nDr8GoFP+jjuITMYyZlbXfTQCIBXWSfG7kvddtrze5KrY8AlGL1Y5qOEzQUym74tx\n7PhW\n-----END CERTIFICATE-----\n"
  }
  expect_failures = [output.user_data]
}

# A setting of the other mode is refused, as inletsctl refuses --http-port with --mode tcp: it was ignored.
run "rejects_an_http_port_in_tcp_mode" {
  command = plan
  variables {
    http_port = 8080
  }
  expect_failures = [output.user_data]
}

run "http_port_defaults_to_80_in_http_mode" {
  command = plan
  variables {
    mode        = "http"
    letsencrypt = false
  }
  assert {
    condition     = output.http_port == 80 && output.firewall_ports == [80, 443, 8123] && strcontains(output.user_data, " --port 80\n")
    error_message = "Left null, http_port is 80 in mode http, as inletsctl's --http-port."
  }
}

# Null, as a wrapper module passes an input it leaves unset, is the input's default (nullable = false): it
# stopped plan with Terraform's "argument must not be null" or "Iteration over null value" inside a validation.
run "takes_null_as_the_default" {
  command = plan
  variables {
    mode           = null
    domains        = null
    control_port   = null
    wheel_delivery = null
  }
  assert {
    condition     = strcontains(output.user_data, "inlets tcp server --control-port 8123 ") && output.wheel.delivery == "embed"
    error_message = "Null mode, domains, control_port and wheel_delivery are tcp, none, 8123 and auto."
  }
}

# The server reads the token from /etc/inlets/token, one per line: a line starting with # is a comment ("token
# file holds no token") and a token over 4096 characters is refused, so either stopped the server at boot.
run "rejects_a_token_the_token_file_reads_as_a_comment" {
  command = plan
  variables {
    token = "#0123456789abcdefABCDEF"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_token_longer_than_the_server_takes" {
  command = plan
  variables {
    token = format("a%04096d", 1) # 4097 characters
  }
  expect_failures = [output.user_data]
}

# token = file("inlets-token") of a file ending in a line break (as inletsctl writes its token file): the token
# itself, as inlets reads a token file, not a refusal
run "takes_a_token_file_ending_in_a_line_break" {
  command = plan
  variables {
    token = "0123456789abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCD\r\n"
  }
  assert {
    condition     = strcontains(output.user_data, "    content: |\n      0123456789abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCD\n  - path: /etc/inlets/server.crt\n")
    error_message = "The token file holds the token without the line break."
  }
}

run "takes_a_token_of_4096_characters" {
  command = plan
  variables {
    token = format("a%04095d", 1)
  }
}

# The server loads its certificate and key at boot ("cannot load TLS certificate", "the key is encrypted"):
# a header alone, a block cut short or an encrypted key passed plan and left a VM whose server never started.
run "rejects_a_server_cert_that_is_a_header_alone" {
  command = plan
  variables {
    server_cert = "-----BEGIN CERTIFICATE-----\n"
  }
  expect_failures = [var.server_cert]
}

run "rejects_a_server_cert_cut_short" {
  command = plan
  variables {
    server_cert = "-----BEGIN CERTIFICATE-----\nMIIBfzCCASWgAwIBAgIUYsy1L/MvhlA63CxVxHP7WP39Ia0wCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRaW5sZXRzIENBIHN0ZXAtY2EwHhcNMjYxMjA0MjMzMTI5WhcN\nMzYxMjAxMjMzMTI5WjAcMRowGAYDVQQDDBFpbmxldHMgQ0Egc3RlcC1jYTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABGZ9p5xPobfCoAscAOK1k54R+/7Pxl5sIywN\nkoF/Dbeq/dVbvT9lg+PMpT6WPMQKUS9Qzj4sBysdH+kayCefSE6jRTBDMBIGA1Ud\nEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBR2HXrk/Wfd\nEwto/jRYp1UC4MRuRjAKBggqhkjOPQQDAgNIADBFAiEA3EiAobK3RAAl/0LFOhkC\n-----END CERTIFICATE-----\n"
  }
  expect_failures = [output.user_data]
}

run "rejects_an_encrypted_server_key" {
  command = plan
  variables {
    server_key = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIHsfake\n-----END ENCRYPTED PRIVATE KEY-----\n"
  }
  expect_failures = [output.user_data]
}

run "rejects_a_server_key_encrypted_the_old_way" {
  command = plan
  variables {
    server_key = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,34934EB3F97E0AB3B30247E924F048D9\n\nMIICfake\n-----END RSA PRIVATE KEY-----\n"
  }
  expect_failures = [output.user_data]
}

run "takes_an_ec_key_after_its_parameters" {
  command = plan
  variables {
    server_key = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n-----BEGIN EC PRIVATE KEY-----\nMHcCfake\n-----END EC PRIVATE KEY-----\n"
  }
}
