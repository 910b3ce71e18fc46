"""Microsoft Teams: Microsoft identity platform (Entra ID v2.0) OAuth 2.0 for Microsoft Graph.

https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow
https://learn.microsoft.com/en-us/graph/api/chatmessage-post
https://learn.microsoft.com/en-us/graph/api/chat-post-messages
https://learn.microsoft.com/en-us/graph/api/user-list-joinedteams
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="microsoft-teams",
    name="Microsoft Teams",
    category="communication",
    description="List the user's teams and channels and post messages to channels and chats.",
    docs_url="https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow",
    # "organizations": the Teams Graph APIs support work/school accounts only ("Delegated
    # (personal Microsoft account): Not supported"), so personal accounts are not offered.
    authorize_url="https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize",
    token_url="https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
    # No per-token revocation endpoint. offline_access yields a (rotating) refresh token.
    # The least-privileged delegated permission of each action; none needs admin consent.
    # Messages can only be sent with delegated permissions (application ones are for migration).
    scopes=("offline_access", "User.Read", "Team.ReadBasic.All", "Channel.ReadBasic.All",
            "ChannelMessage.Send", "Chat.Read", "ChatMessage.Send"),
    scope_separator=" ",
    pkce=True,
    client_auth_method="client_secret_post",
    health_check=Request(url="https://graph.microsoft.com/v1.0/me"),
    actions=(
        Action(name="teams.read", description="List the teams the user is a member of."),
        Action(name="channels.read", description="List a team's channels."),
        Action(name="channel_messages.send", description="Post a message in a channel."),
        Action(name="chats.read", description="Read the user's chats and their messages."),
        Action(name="chat_messages.send", description="Send a message in an existing chat."),
    ),
)
