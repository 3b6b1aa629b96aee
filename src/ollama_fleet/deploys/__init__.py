"""pyinfra deploys. A deploy file of your own needs two lines (templates and defaults come with the package):

from ollama_fleet.deploys import deploy_site
deploy_site()
"""

from ollama_fleet.deploys.site import deploy_site

__all__ = ["deploy_site"]
