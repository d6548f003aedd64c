"""The inbound companion: replies, FAQ auto-answers, routing by genre × language, Slack escalation.

Layering (each module imports only those below it; none imports cli or commands):

    conversations, directory       agent actions, agents/teams admin
    handler                        the webhook entry (one transaction per message)
    routing, rules, messages       pure decisions (+ routing's SQL), wire parsing
    worker ─▶ reply, slack         the senders, outside the webhook path
    report                         reads only

    handler.handle_messages(db, value)   webhook entry: store once, apply rules, route, queue
    worker.run_inbox_worker(db, settings) sends queued rule answers and Slack escalations
    reply.send_agent_reply(...)          an agent's window-checked free-form reply
    conversations.resolve_conversation   close, refill the team queue
    report.inbox_report(...)             FRT and resolution per team / agent
"""

from broadcaster.inbox.conversations import (
    assign_conversation,
    escalate_conversation,
    list_conversations,
    resolve_conversation,
)
from broadcaster.inbox.handler import Inbox, InboxConfig, Outcome, default_inbox, handle_messages, set_default_inbox
from broadcaster.inbox.reply import CloudApiSender, WindowClosed, send_agent_reply
from broadcaster.inbox.report import campaign_replies, inbox_report
from broadcaster.inbox.rules import Decision, Incoming, RulesError, RuleSet, RulesFile, evaluate, load_rules
from broadcaster.inbox.worker import run_inbox_worker

__all__ = [
    "CloudApiSender", "Decision", "Inbox", "InboxConfig", "Incoming", "Outcome", "RuleSet", "RulesError",
    "RulesFile", "WindowClosed", "assign_conversation", "campaign_replies", "default_inbox",
    "escalate_conversation", "evaluate", "handle_messages", "inbox_report", "list_conversations",
    "load_rules", "resolve_conversation", "run_inbox_worker", "send_agent_reply", "set_default_inbox",
]
