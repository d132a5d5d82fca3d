"""The local demo: a service that goes bad, a chat receiver, and the script that runs the story."""
