"""Twilio: HTTP Basic auth, Account SID as username and Auth Token as password.

https://www.twilio.com/docs/usage/requests-to-twilio
"""

from broker.spec import Action, Basic, BasicAuthProvider, Field, Request

ACCOUNT = Request(url="https://api.twilio.com/2010-04-01/Accounts/{account_sid}.json")

provider = BasicAuthProvider(
    slug="twilio",
    name="Twilio",
    category="communication",
    description="Send SMS and read messages and calls of a Twilio account.",
    docs_url="https://www.twilio.com/docs/usage/requests-to-twilio",
    fields=(
        Field(name="account_sid", label="Account SID", pattern=r"AC[0-9a-f]{32}",
              example="AC" + "0123456789abcdef" * 2),
        Field(name="auth_token", label="Auth Token", secret=True, pattern=r"[0-9a-f]{32}",
              example="fedcba9876543210" * 2),
    ),
    apply=Basic(username="{account_sid}", password="{auth_token}"),
    verify=ACCOUNT,
    health_check=ACCOUNT,
    actions=(
        Action(name="messages.send", description="Send an SMS or MMS."),
        Action(name="messages.read", description="Read sent and received messages."),
        Action(name="calls.read", description="Read call logs."),
    ),
)
