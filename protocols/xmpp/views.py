"""The signed-in user's XMPP page: which accounts speak as them, how to link one, unlink."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from bridge.selectors import linked_jids
from bridge.services.identities import identity_unlink_jid
from protocols.xmpp.config import xmpp_config
from protocols.xmpp.linking import link_token


@login_required
@require_http_methods(["GET", "POST"])
def account(request: HttpRequest) -> HttpResponse:
    assert request.user.is_authenticated
    if request.method == "POST":
        identity_unlink_jid(user=request.user, jid=request.POST.get("jid", ""))
        return redirect("xmpp-account")
    config = xmpp_config()
    return render(request, "xmpp/account.html", {
        "jids": linked_jids(user=request.user),
        "component": config.component if config is not None else "",
        "token": link_token(user=request.user),
    })
