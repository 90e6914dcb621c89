"""Train a brain-MRI tumor screening CNN and export a versioned artifact."""

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The trainer tools' --help: module docstrings as written, every flag with its default (flags
    without a help text too)."""

    def _format_action(self, action):
        if action.help is None and action.option_strings and action.default not in (None, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        if action.required:  # a flag the user must give has no default to show ("default: None")
            return action.help
        return super()._get_help_string(action)
