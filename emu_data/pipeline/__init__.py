"""Declarative recipes (pipelines/*.yaml) that `emu-data run` executes: recipe.py reads them,
stages.py turns stages into checked command lines, runner.py runs them, summary.py reports."""
