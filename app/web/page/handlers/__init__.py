"""The page's event handlers, one module per concern, each a small class over a PageContext.

They are plain objects rather than closures inside ``build_ui`` so a test can call
one with a fake service and a request, without a browser or a server. Each returns
its changes by component (``{page.status: "Renamed."}``): a component left out
stays as it is, and the order of outputs lives only in app/web/page/wiring.py.
"""
