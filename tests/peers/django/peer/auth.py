import os


class _Client:
    is_authenticated = True


class BearerToken:
    """Takes `Authorization: Bearer <PEER_TOKEN>` as an authenticated client."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.expected = f"Bearer {os.environ['PEER_TOKEN']}"

    def __call__(self, request):
        if request.headers.get("Authorization") == self.expected:
            request.user = _Client()
        return self.get_response(request)
