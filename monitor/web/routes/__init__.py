"""The routes of the HTTP port, one router per area; monitor.web.app includes them in the application."""
