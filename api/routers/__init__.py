"""One router per resource; api.app.ROUTERS lists the modules the app includes."""
