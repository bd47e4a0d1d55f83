"""``smartgate demo``: the whole gate simulated on one machine (virtual firmware, virtual PLCs, a
broker and a simulated hub) around a real daemon process.
"""
