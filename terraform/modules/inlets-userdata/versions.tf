terraform {
  # No provider: templatefile() and a few functions only, so this module renders
  # (and its tests run) without network access.
  required_version = ">= 1.6"
}
