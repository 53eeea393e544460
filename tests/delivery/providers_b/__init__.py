"""Local stand-ins for SMTP relays, the Telegram Bot API and the Graph (Messenger) API."""
