"""Declaring options and names: option tables (flag, type, range, help, level) and name registries; the bottom layer."""
