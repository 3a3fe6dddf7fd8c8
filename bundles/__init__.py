"""Signed, deterministic offline bundles: pack, verify, extract, split and join.

Public API (docs/formats/bundle.md describes the format):
``pai.bundles.pack.pack_bundle``, ``pai.bundles.verify.verify_bundle``,
``pai.bundles.extract.extract_bundle``, ``pai.bundles.manifest.read_manifest``,
``pai.bundles.parts.split_bundle`` / ``join_parts``; errors in ``pai.bundles.errors``.
"""
