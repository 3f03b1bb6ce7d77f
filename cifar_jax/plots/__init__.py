"""Figures: the shared style and the figures more than one study draws (a study's own figures live with it)."""
