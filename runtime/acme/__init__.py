"""acme"""
