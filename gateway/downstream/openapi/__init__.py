"""REST APIs as downstreams: an OpenAPI 3.0/3.1 document's operations become keyed tools.

document     read (JSON or YAML), validate (openapi-spec-validator), resolve $refs
schema       OpenAPI Schema Objects → JSON Schema 2020-12 (nullable, readOnly, recursion)
operations   operations → tools (names, input and output schemas, annotations)
wire         arguments → HTTP request; HTTP answer → result, or the failure it means
session      the downstream the pool runs: the document's lifecycle, one HTTP client, calls
"""

from gateway.downstream.openapi.document import DocumentError
from gateway.downstream.openapi.session import OpenAPISession

__all__ = ["DocumentError", "OpenAPISession"]
