terraform {
  # No provider: renders the client command line from the generated template.
  required_version = ">= 1.6"
}
