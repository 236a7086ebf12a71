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

run "rejects_a_null_ipv6_network" {
  command = plan
  variables {
    allowed_cidrs_ipv6 = ["2001:db8::/32", null] # refused by the rule, not an error inside Terraform's strcontains()
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

# Null, as a wrapper module passes an input it leaves unset, is the input's default: it stopped plan with
# Terraform's "argument must not be null" (mode, control_port, deliver_wheel) or "Iteration over null value".
run "takes_null_as_the_default" {
  command = plan
  variables {
    mode          = null
    domains       = null
    control_port  = null
    deliver_wheel = null
    push_timeout  = null
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.tunnel) == 3 && length(terraform_data.runtime) == 1 && aws_instance.exit_server.tags["inlets-mode"] == "tcp"
    error_message = "Null mode, domains, control_port and deliver_wheel are tcp, none, 8123 and true."
  }
}

# inletsctl refuses --timeout 0; here apply made the instance, then push_wheel.py gave up at once.
run "rejects_a_push_timeout_of_zero" {
  command = plan
  variables {
    push_timeout = 0
  }
  expect_failures = [var.push_timeout]
}

# An empty client_token_file was refused under the client command module's name (token_file), not this one's.
run "rejects_an_empty_client_token_file" {
  command = plan
  variables {
    client_token_file = ""
  }
  expect_failures = [var.client_token_file]
}

# inletsctl's ec2 provider names the group inlets-NAME in full (firewall_name(NAME, 255): EC2 takes 255
# characters). Cut to 63 here, two names sharing their first 56 characters got one group name, and the
# second apply stopped with AWS's InvalidGroup.Duplicate; inletsctl delete looked for the full name.
run "names_the_security_group_as_inletsctl_does" {
  command = plan
  variables {
    name = "acme-production-eu-west-1-customer-tunnel-for-region-one-a"
  }
  assert {
    condition     = aws_security_group.exit_server.name == "inlets-acme-production-eu-west-1-customer-tunnel-for-region-one-a"
    error_message = "The security group is inlets-NAME, whole, as inletsctl's ec2 provider names it."
  }
}

# inletsctl sets inlets-expires from --ttl alone, and inletsctl list --prune deletes the server at that time:
# with ttl null a tag of yours by that name was kept.
run "rejects_an_inlets_expires_tag_of_yours" {
  command = plan
  variables {
    tags = { "inlets-expires" = "1700000000", team = "edge" }
  }
  expect_failures = [var.tags]
}

# The python is one program (main.tf quotes it, so its path may hold spaces): options pasted after it were
# run as part of the command before; now they would name no program, found only at apply once the VM is made.
run "rejects_options_in_python" {
  command = plan
  variables {
    python = "python3 -X utf8"
  }
  expect_failures = [var.python]
}
