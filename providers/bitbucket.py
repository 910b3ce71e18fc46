"""Bitbucket Cloud: OAuth 2.0 authorization code (OAuth consumer).

https://developer.atlassian.com/cloud/bitbucket/oauth-2/
"""

from broker.spec import Action, OAuth2Provider, Request

provider = OAuth2Provider(
    slug="bitbucket",
    name="Bitbucket",
    category="developer-tools",
    description="Repositories, pull requests and issues on Bitbucket Cloud.",
    docs_url="https://developer.atlassian.com/cloud/bitbucket/oauth-2/",
    authorize_url="https://bitbucket.org/site/oauth2/authorize",
    token_url="https://bitbucket.org/site/oauth2/access_token",
    # Scopes are set on the OAuth consumer, not requested; the token response lists them
    # under "scopes", which the standard parser does not read. No revocation endpoint.
    pkce=False,
    client_auth_method="client_secret_basic",
    health_check=Request(url="https://api.bitbucket.org/2.0/user"),
    actions=(
        Action(name="repositories.read", description="Read repositories and files."),
        Action(name="pull_requests.read", description="Read pull requests."),
        Action(name="pull_requests.comment", description="Comment on a pull request."),
    ),
)
