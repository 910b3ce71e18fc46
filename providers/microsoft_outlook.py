"""Microsoft Outlook: Microsoft identity platform (Entra ID v2.0) OAuth 2.0 for Microsoft Graph.

https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow
https://learn.microsoft.com/en-us/graph/api/resources/mail-api-overview
https://learn.microsoft.com/en-us/graph/api/user-get
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="microsoft-outlook",
    name="Microsoft Outlook",
    category="email",
    description="Read, organise and send Outlook mail and manage Outlook calendar events.",
    docs_url="https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow",
    # "common": work/school and personal (outlook.com) accounts alike.
    authorize_url="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
    token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",
    # No per-token revocation endpoint (only Graph revokeSignInSessions, for all apps).
    # offline_access is what yields a refresh token; it rotates on every refresh.
    # Mail.ReadWrite (not Mail.Read): moving, flagging and marking mail read are updates.
    scopes=("offline_access", "User.Read", "Mail.ReadWrite", "Mail.Send",
            "Calendars.ReadWrite"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    health_check=Request(url="https://graph.microsoft.com/v1.0/me"),
    actions=(
        Action(name="mail.read", description="List, search and read Outlook mail."),
        Action(name="mail.update", description="Move, flag or mark messages read."),
        Action(name="mail.send", description="Send mail as the user."),
        Action(name="events.read", description="Read calendar events."),
        Action(name="events.write", description="Create or update calendar events."),
    ),
)
