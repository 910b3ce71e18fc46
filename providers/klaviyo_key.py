"""Klaviyo (private API key): ``Authorization: Klaviyo-API-Key <key>`` plus a revision header.

https://developers.klaviyo.com/en/docs/authenticate_
"""

from broker.spec import Action, ApiKeyProvider, Field, Header, Request

# Klaviyo pins behaviour per dated revision; every /api call must send one.
REVISION = "2026-10-15"
ACCOUNTS = Request(url="https://a.klaviyo.com/api/accounts",
                   headers={"revision": REVISION, "Accept": "application/vnd.api+json"})

provider = ApiKeyProvider(
    slug="klaviyo-key",
    name="Klaviyo (private API key)",
    category="marketing",
    description="Profiles, lists, events and campaigns of one Klaviyo account, by private key.",
    docs_url="https://developers.klaviyo.com/en/docs/authenticate_",
    fields=(
        # Private keys start with pk_; the 6-character public key (site id) must never be used.
        Field(name="api_key", label="Private API key", secret=True,
              pattern=r"pk_[A-Za-z0-9]{20,80}", example="pk_" + "3f9a1c" * 5 + "7b2d"),
    ),
    apply=Header(name="Authorization", template="Klaviyo-API-Key {api_key}"),
    verify=ACCOUNTS,
    health_check=ACCOUNTS,
    actions=(
        Action(name="profiles.read", description="Look up customer profiles."),
        Action(name="profiles.write", description="Create or update customer profiles."),
        Action(name="lists.read", description="Read lists and segments."),
        Action(name="events.create", description="Track an event for a profile."),
    ),
)
