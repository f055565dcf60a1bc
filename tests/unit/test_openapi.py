"""The OpenAPI document and the routes of the app describe the same API."""
from app.api.errors import STATUS
from app.api.openapi import openapi_document
from app.api.server import create_web_app
from config import Settings


def routes_of_the_app() -> set[tuple[str, str]]:
    app = create_web_app(Settings.from_env({}), services=object())  # type: ignore[arg-type]
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
    }


def test_every_route_is_documented_and_every_documented_path_exists():
    documented = {(method, path) for path, ops in openapi_document()["paths"].items() for method in ops}
    assert documented == routes_of_the_app()


def test_documented_error_statuses_are_ones_the_code_can_return():
    statuses = {str(s) for s in STATUS.values()}
    for path, ops in openapi_document()["paths"].items():
        for method, op in ops.items():
            assert set(op["responses"]) <= statuses, (method, path)


def test_every_result_code_maps_to_a_4xx_or_5xx_unless_it_is_a_success():
    for code, status in STATUS.items():
        assert status in (200, 201, 202) or 400 <= status < 600, code


def test_every_wallet_result_code_has_an_http_status():
    from app.domain.wallet.core import WalletResult

    assert [code for code in WalletResult if code not in STATUS] == []


def test_every_jackpot_result_code_has_an_http_status():
    from app.domain.jackpot.core import JackpotResult

    assert [code for code in JackpotResult if code not in STATUS] == []
