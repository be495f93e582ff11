"""Prompt templates (text files, string.Template syntax), versioned with the package."""
