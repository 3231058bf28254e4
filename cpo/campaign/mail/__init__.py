"""The email as sent and as each platform imports it: the canonical message (`message`), the one layout of its
HTML and text parts (`layout`), and every platform's merge syntax and engine check (`platforms`).

Below the agents: the export agent, the safety screen and the campaign file all use it; it uses nothing of the
campaign above it.
"""
