"""Measuring what an edit did: before/after images, detectors, attacks, image change, charts and
the verdict against a recipe's requirements."""
