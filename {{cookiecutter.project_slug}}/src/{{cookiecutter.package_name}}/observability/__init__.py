{%- if cookiecutter.__signals -%}
"""{{ cookiecutter.__signals | capitalize }} of the service, one module per signal."""
{%- else -%}
"""The request context of the service: the id each request is given."""
{%- endif %}
