# terraform test of the aws-exit-server module's inputs, planned with a mocked aws provider (no AWS
# account, no network; random and tls run locally). tests/test_terraform.py runs it (with the secrets
# module stubbed where random and tls are not installed) and applies the module against moto.

mock_provider "aws" {}

variables {
  name = "tftest"
  ami  = "ami-12345678"
}

run "opens_the_tunnel_ports_to_each_network" {
  command = plan
  variables {
    allowed_cidrs_ipv4 = ["203.0.113.0/24", "198.51.100.7/32"]
    allowed_cidrs_ipv6 = ["2001:db8::/32"]
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.tunnel) == 9 && aws_vpc_security_group_ingress_rule.tunnel["8123-2001:db8::/32"].cidr_ipv6 == "2001:db8::/32"
    error_message = "Each of the 3 ports (80, 443, 8123) is opened to each of the 3 networks."
  }
}

# A network listed twice stopped plan with HCL's "Duplicate object key ... use the ellipsis (...)":
# now one line saying to give each once.
run "rejects_a_network_given_twice" {
  command = plan
  variables {
    allowed_cidrs_ipv4 = ["0.0.0.0/0", "0.0.0.0/0"]
  }
  expect_failures = [var.allowed_cidrs_ipv4]
}

# What the aws provider refuses once per port and network ("must be a valid IPv4 CIDR that represents
# a network address"), refused once, saying what is meant.
run "rejects_an_ipv4_address_without_a_prefix" {
  command = plan
  variables {
    allowed_cidrs_ipv4 = ["203.0.113.7"]
  }
  expect_failures = [var.allowed_cidrs_ipv4]
}

run "rejects_an_ipv4_network_with_host_bits" {
  command = plan
  variables {
    allowed_cidrs_ipv4 = ["203.0.113.7/24"]
  }
  expect_failures = [var.allowed_cidrs_ipv4]
}

run "rejects_an_ipv6_network_among_the_ipv4_ones" {
  command = plan
  variables {
    allowed_cidrs_ipv4 = ["::/0"]
  }
  expect_failures = [var.allowed_cidrs_ipv4]
}

run "rejects_an_ipv4_network_among_the_ipv6_ones" {
  command = plan
  variables {
    allowed_cidrs_ipv6 = ["0.0.0.0/0", "2001:db8::/32", "2001:db8::/32"]
  }
  expect_failures = [var.allowed_cidrs_ipv6]
}

# No network at all: the security group let no one in, and apply waited out push_timeout (15 minutes)
# sending the server wheel before failing.
run "rejects_no_network_when_terraform_sends_the_wheel" {
  command = plan
  variables {
    allowed_cidrs_ipv4 = []
  }
  expect_failures = [aws_security_group.exit_server]
}

run "takes_no_network_when_you_add_the_rules" {
  command = plan
  variables {
    allowed_cidrs_ipv4 = []
    deliver_wheel      = false
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.tunnel) == 0
    error_message = "With deliver_wheel = false the rules may be yours to add to security_group_id."
  }
}
