"""The messaging component of one process: conversations and messages over one database."""

from __future__ import annotations

from tidings.db.database import Database
from tidings.messaging.conversations import Conversations
from tidings.messaging.messages import Messages


class Messaging:
    def __init__(self, db: Database, *, send_batch_size: int) -> None:
        self.conversations = Conversations(db)
        self.messages = Messages(db, send_batch_size=send_batch_size)
