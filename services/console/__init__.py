"""The console: web pages for accounts (management keys) and hosters, and the public network page."""
