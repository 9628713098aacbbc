"""Running a build: the stages of a recipe (localize, edit, export, evidence, card, history),
its lock, its resources and its reproduction."""
