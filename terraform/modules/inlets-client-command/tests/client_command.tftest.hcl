# terraform test of the client command module (no provider). tests/test_terraform.py
# compares its output with inletsctl's client_command() byte for byte.

run "tcp" {
  variables {
    host  = "203.0.113.10"
    ports = [80, 443]
  }
  assert {
    condition     = output.command == "inlets tcp client --url wss://203.0.113.10:8123 --token-file inlets-token --tls-ca inlets-ca.crt --tls-server-name inlets-exit-server --upstream 127.0.0.1 --ports 80,443"
    error_message = "Got: ${output.command}"
  }
}

run "ipv6_and_quoting" {
  variables {
    host       = "2001:db8::1"
    ports      = [22]
    token_file = "/home/me/my token"
  }
  assert {
    condition     = output.url == "wss://[2001:db8::1]:8123" && strcontains(output.command, "--token-file '/home/me/my token' ")
    error_message = "Got: ${output.command}"
  }
}

run "http_domains" {
  variables {
    host     = "198.51.100.7"
    mode     = "http"
    domains  = ["example.com", "api.example.com"]
    upstream = "http://127.0.0.1:3000"
  }
  assert {
    condition     = endswith(output.command, "--tls-server-name inlets-exit-server --upstream example.com=http://127.0.0.1:3000 --upstream api.example.com=http://127.0.0.1:3000")
    error_message = "Got: ${output.command}"
  }
}

run "rejects_a_url_upstream_in_tcp_mode" {
  command = plan
  variables {
    host     = "198.51.100.7"
    ports    = [80]
    upstream = "http://127.0.0.1:3000"
  }
  expect_failures = [output.command]
}

run "rejects_a_tcp_upstream_with_a_port" {
  command = plan
  variables {
    host     = "203.0.113.10"
    mode     = "tcp"
    ports    = [80]
    upstream = "127.0.0.1:80"
  }
  expect_failures = [output.command]
}

run "rejects_an_http_upstream_with_a_path_or_a_bad_port" {
  command = plan
  variables {
    host     = "203.0.113.10"
    mode     = "http"
    upstream = "http://127.0.0.1:99999"
  }
  expect_failures = [output.command]
}

run "takes_an_ipv6_upstream" {
  command = plan
  variables {
    host     = "203.0.113.10"
    mode     = "http"
    upstream = "http://[::1]:8080"
  }
  assert {
    condition     = endswith(output.command, "--upstream 'http://[::1]:8080'")
    error_message = "the IPv6 upstream URL, shell-quoted"
  }
}

# What the client itself refuses must fail at plan, not be printed as a command that cannot run.
run "rejects_ports_the_client_refuses" {
  command = plan
  variables {
    host  = "203.0.113.10"
    ports = [0, 70000, 80, 80]
  }
  expect_failures = [var.ports]
}

run "rejects_a_null_port" {
  command = plan
  variables {
    host  = "203.0.113.10"
    ports = [80, null] # a wrapper's unset element: refused by the rule, not an error inside Terraform's floor()
  }
  expect_failures = [var.ports]
}

run "rejects_a_bad_control_port" {
  command = plan
  variables {
    host         = "203.0.113.10"
    ports        = [80]
    control_port = 0
  }
  expect_failures = [var.control_port]
}

run "rejects_a_bad_domain" {
  command = plan
  variables {
    host    = "203.0.113.10"
    mode    = "http"
    domains = ["bad domain!"]
  }
  expect_failures = [var.domains]
}

run "rejects_a_null_domain" {
  command = plan
  variables {
    host    = "203.0.113.10"
    mode    = "http"
    domains = ["example.com", null] # refused by the rule, not an error inside Terraform's trimspace()
  }
  expect_failures = [var.domains]
}

run "rejects_an_empty_host" {
  command = plan
  variables {
    host  = ""
    ports = [80]
  }
  expect_failures = [var.host]
}

run "rejects_tcp_mode_without_ports" {
  command = plan
  variables {
    host = "203.0.113.10"
  }
  expect_failures = [output.command]
}

run "rejects_a_data_port_on_the_control_port" {
  command = plan
  variables {
    host  = "203.0.113.10"
    ports = [8123]
  }
  expect_failures = [output.command]
}

# The client's own host rule (runtime/core/hosts.py check_host), which inletsctl create applies to --upstream.
run "rejects_an_empty_upstream" {
  command = plan
  variables {
    host     = "203.0.113.10"
    ports    = [80]
    upstream = ""
  }
  expect_failures = [var.upstream]
}

run "rejects_an_upstream_of_numbers_that_is_no_ipv4_address" {
  command = plan
  variables {
    host     = "203.0.113.10"
    ports    = [80]
    upstream = "999.1.1.1"
  }
  expect_failures = [output.command]
}

run "rejects_an_upstream_that_is_no_ipv6_address" {
  command = plan
  variables {
    host     = "203.0.113.10"
    ports    = [80]
    upstream = "1::2::3"
  }
  expect_failures = [output.command]
}

run "rejects_an_upstream_label_with_an_outer_hyphen" {
  command = plan
  variables {
    host     = "203.0.113.10"
    mode     = "http"
    upstream = "http://-backend.internal:8080"
  }
  expect_failures = [output.command]
}

run "rejects_an_http_upstream_of_numbers_that_is_no_ipv4_address" {
  command = plan
  variables {
    host     = "203.0.113.10"
    mode     = "http"
    upstream = "http://10.0.0.256:8080"
  }
  expect_failures = [output.command]
}

run "takes_upstreams_the_client_takes" {
  command = plan
  variables {
    host     = "203.0.113.10"
    mode     = "http"
    upstream = "HTTPS://Backend_1.internal.:8443/"
  }
  assert {
    condition     = endswith(output.command, "--upstream HTTPS://Backend_1.internal.:8443/")
    error_message = "Got: ${output.command}"
  }
}

run "takes_a_bracketed_ipv6_tcp_upstream" {
  command = plan
  variables {
    host     = "203.0.113.10"
    ports    = [80]
    upstream = "[::ffff:10.0.0.1]"
  }
  assert {
    condition     = strcontains(output.command, "--upstream '[::ffff:10.0.0.1]' --ports 80")
    error_message = "Got: ${output.command}"
  }
}

# Null, as a wrapper module passes an input it leaves unset, is the input's default: null mode and
# control_port stopped plan inside a validation with Terraform's "argument must not be null".
run "takes_null_as_the_default" {
  command = plan
  variables {
    host         = "203.0.113.10"
    ports        = [80]
    mode         = null
    domains      = null
    control_port = null
    token_file   = null
    ca_file      = null
    inlets       = null
  }
  assert {
    condition     = output.command == "inlets tcp client --url wss://203.0.113.10:8123 --token-file inlets-token --tls-ca inlets-ca.crt --tls-server-name inlets-exit-server --upstream 127.0.0.1 --ports 80"
    error_message = "Got: ${output.command}"
  }
}

run "takes_null_ports_as_none" {
  command = plan
  variables {
    host  = "203.0.113.10"
    mode  = "http"
    ports = null
  }
  assert {
    condition     = endswith(output.command, "--upstream http://127.0.0.1:8080")
    error_message = "Got: ${output.command}"
  }
}

# An empty token_file was printed as --token-file '', which the client reads as the current folder.
run "rejects_an_empty_token_file" {
  command = plan
  variables {
    host       = "203.0.113.10"
    ports      = [80]
    token_file = ""
  }
  expect_failures = [var.token_file]
}

# An empty ca_file was printed as --tls-ca '' (the client read the current folder), an empty inlets as the
# command '' (which no shell runs).
run "rejects_an_empty_ca_file" {
  command = plan
  variables {
    host    = "203.0.113.10"
    ports   = [80]
    ca_file = ""
  }
  expect_failures = [var.ca_file]
}

run "rejects_an_empty_inlets_command" {
  command = plan
  variables {
    host   = "203.0.113.10"
    ports  = [80]
    inlets = " "
  }
  expect_failures = [var.inlets]
}

# A probe's findings: cidrhost takes leading zeros, which the client refuses, and a host with brackets or a port
# made a --url the client refuses (wss://[[::1]]:8123, wss://[example.com:8123]:8123).
run "rejects_an_upstream_address_with_leading_zeros" {
  command = plan
  variables {
    host     = "203.0.113.10"
    ports    = [80]
    upstream = "127.000.0.1"
  }
  expect_failures = [output.command]
}

run "rejects_an_http_upstream_address_with_leading_zeros" {
  command = plan
  variables {
    host     = "203.0.113.10"
    mode     = "http"
    upstream = "http://010.0.0.1:8080"
  }
  expect_failures = [output.command]
}

run "rejects_a_bracketed_host" {
  command = plan
  variables {
    host  = "[::1]"
    ports = [80]
  }
  expect_failures = [var.host]
}

run "rejects_a_host_with_a_port" {
  command = plan
  variables {
    host  = "example.com:8123"
    ports = [80]
  }
  expect_failures = [var.host]
}

run "takes_an_ipv6_host_and_a_name" {
  command = plan
  variables {
    host  = "2001:db8::7"
    ports = [80]
  }
  assert {
    condition     = strcontains(output.command, "--url 'wss://[2001:db8::7]:8123'") || strcontains(output.command, "--url wss://[2001:db8::7]:8123")
    error_message = "the IPv6 host is bracketed once in the URL: ${output.command}"
  }
}
