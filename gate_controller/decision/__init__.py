"""Deciding one passage: ISO 6346 identity from OCR reads, the site's signed notices, the policy
with its reason codes, and the decider that composes them with the image review.

May import ``core`` and ``inference``; never the lane, the PLC, the hub link or the service.
"""
