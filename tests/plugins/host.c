/*
 * host - a test plugin for the Python client's "args and kwargs" example
 * (consumers: def print_host(numbers, host, port=80) with
 * Pool(print_host, 1, args=('remote',), kwargs={'port': 8123})).  The
 * host is the pool's args[0], the port its kwargs.port (80 without it);
 * a stream's params {"port": N} overrides the port.  The result is the
 * array of "HOST:PORT ITEM" lines, in the order taken.
 */
#include <stdlib.h>

#include <consumers/plugin.h>

static json_t *
host_consume(cns_items *items, const cns_ctx *ctx)
{
	json_t *host = json_array_get(cns_args(ctx), 0);
	json_t *port = json_object_get(cns_kwargs(ctx), "port");
	json_t *pport = json_object_get(cns_params(ctx), "port");
	json_t *lines = json_array(), *item;
	json_int_t p = 80;

	if (json_is_integer(port))
		p = json_integer_value(port);
	if (json_is_integer(pport))
		p = json_integer_value(pport);
	if (!json_is_string(host)) {
		cns_fail(ctx, "args[0] must be the host name, a string");
		return lines;
	}
	while ((item = cns_next(items)) != NULL) {
		char *text = json_dumps(item, JSON_COMPACT | JSON_ENCODE_ANY);

		json_array_append_new(lines, json_sprintf("%s:%" JSON_INTEGER_FORMAT
		    " %s", json_string_value(host), p, text != NULL ? text : "?"));
		free(text);
	}
	return lines;
}

CONSUMERS_PLUGIN(.consume = host_consume);
